"""Loss terms of the fit; which ones run, with what weight and when, is config data
(:mod:`recon4d.losses.schedule`, :class:`recon4d.train.config.LossConfig`)."""
