"""d2sfm's tests, in folders that mirror the package (tests/features tests d2sfm/features, ...); tests/hostile holds
the hostile-input suite and the top level what spans the package (API, architecture, packaging)."""
