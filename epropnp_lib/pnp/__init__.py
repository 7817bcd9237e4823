"""PnP: robust cost, closed-form initialisation, LM solver, Laplace covariance."""
