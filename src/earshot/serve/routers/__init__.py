"""The HTTP routes by area: predict, models, train (and jobs), samples, meta (health, metrics), pages."""
