"""Batch reconstruction: many inputs from a manifest, locally or on a Ray cluster.

``load_manifest`` turns a CSV/JSONL manifest into jobs with safe run dirs under OUT;
``run_batch`` runs the unfinished ones (local worker processes or Ray tasks), retries, and keeps
OUT/summary.json and OUT/summary.csv up to date. See docs/batch.md.
"""

from recon4d.batch.manifest import JobSpec, load_manifest, safe_job_name
from recon4d.batch.runner import run_batch

__all__ = ["JobSpec", "load_manifest", "run_batch", "safe_job_name"]
