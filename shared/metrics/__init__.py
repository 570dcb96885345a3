"""Prometheus metrics, `/healthz` and `/readyz` for every service (see the README's
"Metrics and dashboard"): `families` names every metric, `export` turns status snapshots
into them, `health` says what the probes answer, `endpoint` serves all three."""
