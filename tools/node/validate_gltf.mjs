// Validate glTF/GLB files with the Khronos glTF-Validator and print one JSON report per file.
// Usage: node tools/node/validate_gltf.mjs FILE [FILE ...]
// Prints a JSON array [{file, numErrors, numWarnings, numInfos, messages: [...]}, ...];
// exits 1 if any file has errors, 2 on bad usage or a file that cannot be read.
import fs from "node:fs";
import path from "node:path";
import validator from "gltf-validator";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate_gltf.mjs FILE [FILE ...]");
  process.exit(2);
}

const reports = [];
let failed = false;
for (const file of files) {
  let bytes;
  try {
    bytes = new Uint8Array(fs.readFileSync(file));
  } catch (err) {
    console.error(`cannot read ${file}: ${err.message}`);
    process.exit(2);
  }
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 200,
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)), (err, data) =>
          err ? reject(err.toString()) : resolve(new Uint8Array(data)));
      }),
  });
  const issues = report.issues;
  if (issues.numErrors > 0) failed = true;
  reports.push({
    file,
    validatorVersion: report.validatorVersion,
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    messages: issues.messages,
    info: report.info,
  });
}
console.log(JSON.stringify(reports, null, 2));
process.exitCode = failed ? 1 : 0;  // no process.exit(): it would cut a piped stdout short
