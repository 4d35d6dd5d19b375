"""The performance targets for the 2-core reference machine (load generator on the same
machine), checked against a run's points. Informational: a miss is reported, not raised."""

from __future__ import annotations

from typing import Any

C1_P50_MS = {"mlp": 0.6}  # concurrency 1, end to end
C32_INFERENCES_PER_S = {"mlp": 5000, "cnn": 5000, "lstm": 4000, "transformer": 4000}
C32_P99_MS = 15.0
DOMAIN_VS_V2 = 0.85  # domain API throughput at least 85% of v2's at the same point


def evaluate(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per target that this run has points for: what was asked, got, and ok."""
    by_key = {(p["model"], p["api"], p["concurrency"]): p for p in points}
    checks: list[dict[str, Any]] = []

    def add(name: str, got: float, want: str, ok: bool) -> None:
        checks.append({"target": name, "got": round(got, 3), "want": want, "ok": bool(ok)})

    for (model, api, conc), p in sorted(by_key.items()):
        if conc == 1 and model in C1_P50_MS:
            limit = C1_P50_MS[model]
            add(f"{model} {api} c1 p50 ms", p["p50_ms"], f"<= {limit}", p["p50_ms"] <= limit)
        if conc == 32 and model in C32_INFERENCES_PER_S:
            floor = C32_INFERENCES_PER_S[model]
            add(
                f"{model} {api} c32 inferences/s",
                p["inferences_per_s"],
                f">= {floor}",
                p["inferences_per_s"] >= floor,
            )
            add(
                f"{model} {api} c32 p99 ms",
                p["p99_ms"],
                f"<= {C32_P99_MS}",
                p["p99_ms"] <= C32_P99_MS,
            )
            add(f"{model} {api} c32 errors", p["error_count"], "== 0", p["error_count"] == 0)
        if api == "domain" and (model, "v2", conc) in by_key:
            v2 = by_key[(model, "v2", conc)]["inferences_per_s"]
            ratio = p["inferences_per_s"] / v2 if v2 else 0.0
            add(
                f"{model} domain/v2 c{conc} throughput",
                ratio,
                f">= {DOMAIN_VS_V2}",
                ratio >= DOMAIN_VS_V2,
            )
    return checks
