"""Tables and checks over the rows of ``train.run_one``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .methods import FULL, Method

ISSUE_SETUP = {"task": "sst2", "train_size": 4000, "epochs": 2, "batch_size": 32, "max_length": 64}
MARGIN = 1.0  # percentage points


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _params(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def runs_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per run, 'not available' and errors included."""
    f1 = any("dev_f1" in r for r in rows)
    head = ["method", "lr", "trainable params", "with head", "% of model", "dev acc"]
    head += ["dev F1"] if f1 else []
    head += ["train time (s)", "device", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [
            r["method"],
            f"{r['lr']:g}",
            _params(r.get("trainable")),
            _params(r.get("trainable_with_head")),
            f"{r['percent']:.2f}" if "percent" in r else "",
            _pct(r.get("dev_accuracy")) if ok else "",
        ]
        cells += [_pct(r.get("dev_f1")) if ok else ""] if f1 else []
        # the full message is in the JSON; an error keeps a short excerpt here
        status = f"error: {r.get('message', '')[:80]}".replace("|", "/") if r["status"] == "error" else r["status"]
        cells += [f"{r['train_seconds']:.1f}" if ok else "", r["device"], status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_per_method(rows: Sequence[dict]) -> dict[str, dict]:
    """The run of highest dev accuracy per method (ties: the smaller lr); methods with no ok run map to
    their first row."""
    best: dict[str, dict] = {}
    for r in rows:
        cur = best.get(r["method"])
        if cur is None:
            best[r["method"]] = r
            continue
        if r["status"] != "ok":
            continue
        if cur["status"] != "ok" or r["dev_accuracy"] > cur["dev_accuracy"]:
            best[r["method"]] = r
    return best


def best_table(rows: Sequence[dict], methods: dict[str, Method], with_reference: bool = True) -> str:
    """Markdown: per method the lrs tried, the best, and the accuracy at the default (reference) lr;
    ``with_reference`` adds the reference library's SST-2 number (meaningless on other tasks)."""
    head = ["method", "lrs tried", "best lr", "dev acc at best lr", "dev acc at default lr"]
    head += ["reference (lr)"] if with_reference else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, best in best_per_method(rows).items():
        tried = ", ".join(f"{r['lr']:g}" for r in rows if r["method"] == name)
        method = methods.get(name)
        at_default = _at_lr(rows, name, method.default_lr) if method else None
        if best["status"] != "ok":
            cells = [name, tried, best["status"], "", ""]
        else:
            at_text = _pct(at_default["dev_accuracy"]) if at_default and at_default["status"] == "ok" else ""
            cells = [name, tried, f"{best['lr']:g}", _pct(best["dev_accuracy"]), at_text]
        if with_reference:
            known = method is not None and method.reference_accuracy is not None
            cells.append(f"{method.reference_accuracy} ({method.default_lr:g})" if known else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _at_lr(rows: Sequence[dict], method: str, lr: float) -> dict | None:
    return next((r for r in rows if r["method"] == method and math.isclose(r["lr"], lr, rel_tol=1e-9)), None)


def is_issue_setup(setup: dict) -> bool:
    return all(setup.get(k) == v for k, v in ISSUE_SETUP.items())


def checks(rows: Sequence[dict], methods: dict[str, Method]) -> list[dict]:
    """The issue's bars on SST-2 (one dict per check: name, status PASS/FAIL/SKIP, detail).

    1. At the reference lr, each method with a reference number reaches reference - 1 point
       (loreft: its own absolute bar, 75, since the reference stays at chance).
    2. The best adapter run (any method, any lr) is within 1 point of the best full fine-tuning run.
    """
    out = []
    for name, method in methods.items():
        if method.reference_accuracy is None or not any(r["method"] == name for r in rows):
            continue
        bar = method.min_accuracy if method.min_accuracy is not None else method.reference_accuracy - MARGIN
        row = _at_lr(rows, name, method.default_lr)
        check = f"{name} at lr {method.default_lr:g} >= {bar:.1f}"
        if row is None:
            out.append({"check": check, "status": "SKIP", "detail": "not run at the reference lr"})
        elif row["status"] != "ok":
            out.append({"check": check, "status": "FAIL", "detail": row["status"]})
        else:
            acc = 100 * row["dev_accuracy"]
            out.append({"check": check, "status": "PASS" if acc >= bar else "FAIL", "detail": f"{acc:.1f}"})
    ok = [r for r in rows if r["status"] == "ok"]
    full = [r for r in ok if r["method"] == FULL]
    adapted = [r for r in ok if r["method"] != FULL]
    if full and adapted:
        best_full = max(full, key=lambda r: r["dev_accuracy"])
        best_ad = max(adapted, key=lambda r: r["dev_accuracy"])
        gap = 100 * (best_full["dev_accuracy"] - best_ad["dev_accuracy"])
        out.append(
            {
                "check": f"best adapter within {MARGIN:g} point of best full fine-tuning",
                "status": "PASS" if gap <= MARGIN else "FAIL",
                "detail": (
                    f"{best_ad['method']} (lr {best_ad['lr']:g}) {_pct(best_ad['dev_accuracy'])} vs full "
                    f"(lr {best_full['lr']:g}) {_pct(best_full['dev_accuracy'])}: gap {gap:.1f}"
                ),
            }
        )
    return out


def checks_text(results: list[dict], binding: bool) -> str:
    note = "" if binding else " (not the issue's setup: informational)"
    return "\n".join(f"{c['status']}{note}: {c['check']}: {c['detail']}" for c in results)
