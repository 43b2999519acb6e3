"""The interactive 4D viewer (a viser web app over recon4d's render API). Installed as
``recon4d.viewer``."""
