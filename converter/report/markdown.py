"""report.md: report.json for people, with the plots embedded by relative links."""
from __future__ import annotations

import math
from typing import Any

from converter.report.components import COMPONENTS, LABELS
from converter.report.expert_use import expert_use_lines
from converter.report.output_types import output_types_lines
from converter.report.retention import sentence


def human_bytes(n: int) -> str:
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"


def _change(before: int, after: int) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


def _image(data: dict[str, Any], key: str, alt: str) -> list[str]:
    made = data["plots"]["made"]
    if key in made:
        return [f"![{alt}]({made[key]})", ""]
    reason = data["plots"]["not_made"].get(key) or data["plots"]["not_made"].get("all", "")
    return [f"*Plot not made: {reason}.*", ""]


def _parameters(data: dict[str, Any]) -> list[str]:
    p = data["parameters"]
    lines = ["## Parameters", "", "| component | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for c in (*COMPONENTS, "total"):
        b, a = p["before"][c], p["after"][c]
        name = "**total**" if c == "total" else LABELS[c]
        lines.append(f"| {name} | {b:,} | {a:,} | {_change(b, a)} |")
    lines += ["", f"Removed {p['removed']:,} parameters ({100 * p['removed_fraction']:.2f}%)."
              + (" The LM head is tied to the embedding (stored once)." if data["source"]["tied_embeddings"] else ""),
              "", *_image(data, "parameters", "parameters by component")]
    return lines


def _files(data: dict[str, Any]) -> list[str]:
    out, src = data["output"], data["source"]
    lines = ["## Files", "", "| file | bytes | |", "| --- | ---: | ---: |"]
    lines += [f"| `{f['path']}` | {f['bytes']:,} | {human_bytes(f['bytes'])} |" for f in out["files"]]
    lines += ["", f"Output: {out['total_bytes']:,} bytes ({human_bytes(out['total_bytes'])}) without the report "
              f"files. Input weights: {src['weights_bytes']:,} bytes ({human_bytes(src['weights_bytes'])}); input "
              f"folder: {src['folder_bytes']:,} bytes.", ""]
    return lines


def _why_less(c: dict[str, Any]) -> str:
    if c["top_n_coverage_at_kept_size"] - c["kept_vocab_coverage"] < 5e-5:
        return ""
    return " (the tokenizer rules keep special tokens, bytes and merge parents in place of some frequent ones)"


def _calibration(data: dict[str, Any]) -> list[str]:
    c = data["calibration"]
    lines = ["## Calibration coverage", ""]
    if not c["available"]:
        lines.append(f"{c['reason']}.")
        if "kept_vocab_coverage_from_plan" in c:
            lines.append(f"The plan's metadata says the kept vocabulary covers "
                         f"{100 * float(c['kept_vocab_coverage_from_plan']):.2f}% of its calibration tokens.")
        return [*lines, "", *_image(data, "coverage", "coverage")]
    needed = ", ".join(f"{100 * float(k):g}%: {v:,}" for k, v in c["vocab_needed_for"].items())
    lines += [f"The kept vocabulary covers **{100 * c['kept_vocab_coverage']:.2f}%** of the "
              f"{c['tokens_counted']:,} calibration tokens counted ({c['distinct_tokens_seen']:,} distinct tokens "
              f"seen); the same number of the most frequent tokens would cover "
              f"{100 * c['top_n_coverage_at_kept_size']:.2f}%{_why_less(c)}. "
              f"Vocabulary needed for a coverage of {needed}.", "",
              f"Scores: {c.get('scores')}; corpus: {'; '.join(c['corpus'])}.", "",
              *_image(data, "coverage", "calibration coverage against vocabulary size")]
    return lines


def _importance(data: dict[str, Any]) -> list[str]:
    f = data["ffn_importance"]
    lines = ["## FFN channel importance", ""]
    if not f["available"]:
        return [*lines, f"{f['reason']}.", "", *_image(data, "ffn_importance", "FFN importance")]
    shares = f["kept_importance_share_per_layer"]
    lines += [f"Criterion `{f['method']}`. The kept channels hold {100 * f['kept_importance_share_mean']:.1f}% of "
              f"each layer's importance on average (lowest {100 * min(shares):.1f}% in layer "
              f"{shares.index(min(shares))}, highest {100 * max(shares):.1f}%).", "",
              *_image(data, "ffn_importance", "per-layer FFN importance")]
    return lines


def _splits(data: dict[str, Any]) -> list[str]:
    s = data["auto_split"]
    lines = ["## Auto-split", ""]
    if not s["ran"]:
        return [*lines, f"{s['reason']}.", ""]
    retained = any(r.get("retention", {}).get("measured") for r in s["candidates"])
    blended = any("objective" in r for r in s["candidates"])
    extra = ("| dropped answer bytes | answer bits/byte ratio ", "| ---: | ---: ") if retained else ("", "")
    experts = any("moe_ffn" in r for r in s["candidates"])  # a mixture of experts: its experts' width too
    sizes = ("| vocab | FFN | experts' FFN ", "| ---: | ---: | ---: ") if experts \
        else ("| vocab | FFN ", "| ---: | ---: ")
    if blended:
        extra = (extra[0] + "| objective ", extra[1] + "| ---: ")
        weight = float(s["general_weight"] or 0)
        wins = (f"the lowest objective wins: the held-out and the general-answer bits-per-byte excess over the dense "
                f"model's, each divided by the smallest excess any candidate reached, weighted {1 - weight:g} and "
                f"{weight:g} (--general-weight).")
    else:
        wins = "the lowest wins."
    cap = s.get("max_dropped_share")
    if isinstance(cap, (int, float)):
        wins += (f" Splits that put more than {100 * cap:g}% of the general probe's selection answers in dropped "
                 "tokens (--max-dropped-share) are marked *over cap* and lose to every split within it.")
    lines += [f"Target ratio {s['target_ratio']}: each split of the budget between vocabulary and FFN was scored in "
              "bits per byte on held-out calibration text (text that chose neither tokens nor channels); "
              f"{wins}", "", f"{sizes[0]}| parameters | held-out bits/byte {extra[0]}| |",
              f"{sizes[1]}| ---: | ---: {extra[1]}| --- |"]
    for r in s["candidates"]:
        bpb = "-" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.5f}"
        objective = ("| -" if "objective" not in r else f"| {r['objective']:.5f}") + " " if blended else ""
        width = f"| {r['moe_ffn']:,} " if experts else ""
        lines.append(f"| {r['vocab']:,} | {r['ffn']:,} {width}| {r.get('params', 0):,} | {bpb} "
                     f"{_retention_cells(r) if retained else ''}{objective}| {_mark(r)} |")
    lines.append("")
    if s.get("reason"):
        lines += [f"{s['reason']}.", ""]
    return [*lines, *_image(data, "auto_split", "auto-split candidates")]


def _mark(row: dict[str, Any]) -> str:
    return ", ".join(m for m, on in (("**chosen**", row["chosen"]), ("*over cap*", row.get("over_cap"))) if on)


def _retention_cells(row: dict[str, Any]) -> str:
    r = row.get("retention") or {}
    if not r.get("measured"):
        return "| - | - "
    ratio = f"{r['ratio']:.2f}x" if math.isfinite(r["ratio"]) else "unbounded"
    return f"| {100 * r['dropped_share']:.2f}% | {ratio} "


def _retention(data: dict[str, Any]) -> list[str]:
    r = data["retention"]
    lines = ["## General-capability retention", "", sentence(r), ""]
    if not r["measured"]:
        return lines
    unseen = " that chose neither tokens nor channels" if r.get("split", "heldout") == "heldout" else ""
    return [*lines, "The prompts are everyday requests (facts, health, cooking, travel, writing, maths, code, "
            f"translation){unseen}; the dense model's own greedy answers are read back by both models, "
            "teacher-forced.", "", *_image(data, "retention", "general-capability retention")]


def _refit(refit: dict[str, Any] | None) -> str:
    return "none (kept columns sliced)" if not refit else f"least squares, ridge {refit['ridge']:g}"


def render(data: dict[str, Any]) -> str:
    src, plan = data["source"], data["plan"]
    v, f = plan["vocab_size"], plan["intermediate_size"]
    lines = ["# compact-convert report", "",
             f"    {data['command_line']}" if data["command_line"] else "(called as a library, no command line)", "",
             "| | |", "| --- | --- |",
             f"| format | `{data['format']}`, outtype `{data['outtype'] or 'default'}` |",
             f"| source | `{src['folder']}` ({src['architecture']}, {src['layers']} layers) |",
             f"| fingerprint | `{src['fingerprint']}` |",
             f"| vocabulary | {v['before']:,} -> {v['after']:,} |",
             f"| FFN intermediate size | {f['before']:,} -> {f['after']:,} |",
             *([f"| experts' FFN intermediate size | {plan['moe_intermediate_size']['before']:,} -> "
                f"{plan['moe_intermediate_size']['after']:,} |"] if "moe_intermediate_size" in plan else []),
             f"| method | {plan['method'] or '-'} |",
             f"| down_proj refit | {_refit(plan.get('ffn_refit'))} |",
             f"| compact-convert | {data['compact_convert_version']} |", ""]
    lines += _parameters(data) + _files(data) + output_types_lines(data.get("output_types", {}))
    lines += _calibration(data) + _importance(data) + _splits(data)
    if "expert_use" in data:
        lines += expert_use_lines(data["expert_use"], _image(data, "expert_use", "tokens routed per expert"))
    lines += _retention(data)
    return "\n".join(lines).rstrip() + "\n"
