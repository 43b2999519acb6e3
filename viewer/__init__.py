"""The interactive 4D viewer (a viser web app over recon4d's render API). Installed as
``recon4d.viewer``.

Modules: ``app`` (ViewerApp: the server, GUI and render thread), ``live`` (LiveViewer for
``recon4d fit --viewer``), ``web_export`` (write_web: static player folder), ``source`` (what
a run folder offers: scene, frames, metrics, exported mesh), ``engine`` (server-side rendering),
``cameras``, ``modes``, ``overlays``, ``timeline``. Nothing heavy is imported here.
"""
