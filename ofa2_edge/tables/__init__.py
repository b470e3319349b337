"""Device tables on disk: measurements, device identity and fitted predictors, one owner for the layout."""
