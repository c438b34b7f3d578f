"""Rich tables for `eqm eval`'s IJB, YouTube Faces and MegaFace results (percentages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

if TYPE_CHECKING:
    from eqmcli.evaluation.ijb.protocol import IjbResult
    from eqmcli.evaluation.megaface.protocol import MegafaceResult
    from eqmcli.evaluation.ytf.protocol import YtfResult

NOT_REPORTED = "—"


def _pct(value: float | None) -> str:
    return NOT_REPORTED if value is None else f"{100.0 * value:.2f}"


def _table(title: str) -> Table:
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )


def _far_header(key: str) -> str:
    """``"1e-06"`` -> ``"1e-6"`` (narrow column headers)."""
    mantissa, exponent = key.split("e")
    return f"{mantissa}e{int(exponent)}"


def ijb_table(results: list[IjbResult]) -> Table:
    """TAR (%) at FAR 1e-6 ... 1e-1 and AUC per IJB set."""
    table = _table("IJB 1:1 templates: TAR (%) at FAR ≤ 1e-6 ... 1e-1")
    far_keys = list(results[0].tar_at_far)
    table.add_column("set", no_wrap=True)
    table.add_column("pairs", justify="right", no_wrap=True)
    for key in far_keys:
        table.add_column(_far_header(key), justify="right", no_wrap=True)
    table.add_column("AUC", justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            r.benchmark,
            f"{r.pairs:,}",
            *(_pct(r.tar_at_far[k]) for k in far_keys),
            NOT_REPORTED if r.auc is None else f"{r.auc:.4f}",
        )
    return table


def identification_table(results: list[IjbResult]) -> Table | None:
    """CMC (%) at ranks 1/5/10 and TPIR (%) at FPIR per gallery, when 1:N ran."""
    rows = [(r.benchmark, g) for r in results for g in r.identification]
    if not rows:
        return None
    table = _table("IJB 1:N mixed probes: CMC and TPIR at FPIR (%)")
    first = rows[0][1]
    columns = ["set", "gallery", "mated", "other"]
    columns += [f"rank{k}" for k in first.cmc]
    columns += [f"@{_far_header(k)}" for k in first.tpir_at_fpir]
    for column in columns:
        left = column in ("set", "gallery")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for name, g in rows:
        table.add_row(
            name, g.gallery, f"{g.mated:,}", f"{g.non_mated:,}",
            *(_pct(v) for v in g.cmc.values()), *(_pct(v) for v in g.tpir_at_fpir.values()),
        )
    return table


def ytf_table(result: YtfResult) -> Table:
    """YouTube Faces 10-fold accuracy over the official splits."""
    r = result.result
    table = _table("YouTube Faces (10 official splits; %, threshold in cosine units)")
    for column in ("videos", "frames/video", "pairs", "acc ± std", "cos thr", "AUC"):
        table.add_column(column, justify="right", no_wrap=True)
    accuracy = (
        NOT_REPORTED if r.accuracy is None or r.accuracy_std is None
        else f"{_pct(r.accuracy)} ± {_pct(r.accuracy_std)}"
    )
    table.add_row(
        f"{result.videos:,}",
        "all" if result.frames_per_video <= 0 else f"≤{result.frames_per_video}",
        f"{r.pairs:,}",
        accuracy,
        NOT_REPORTED if r.threshold is None else f"{r.threshold:.4f}",
        NOT_REPORTED if r.auc is None else f"{r.auc:.4f}",
    )
    return table


def megaface_table(result: MegafaceResult) -> Table:
    """MegaFace rank-1 (%) and TAR (%) at FAR 1e-6 per distractor count."""
    table = _table(f"MegaFace challenge 1 ({result.probes:,} probe images, {result.features})")
    for column in ("distractors", "rank-1", "TAR@FAR=1e-6"):
        table.add_column(column, justify="right", no_wrap=True)
    for size, count in result.distractors.items():
        table.add_row(f"{count:,}", _pct(result.rank1[size]), _pct(result.tar_at_far_1e6[size]))
    return table


def protocol_tables(results: list[Any]) -> list[Table]:
    """One table per kind of result, in the order IJB 1:1, IJB 1:N, YTF, MegaFace."""
    ijb = [r for r in results if r.benchmark in ("ijbb", "ijbc")]
    tables: list[Table | None] = []
    if ijb:
        tables += [ijb_table(ijb), identification_table(ijb)]
    tables += [ytf_table(r) for r in results if r.benchmark == "ytf"]
    tables += [megaface_table(r) for r in results if r.benchmark == "megaface"]
    return [t for t in tables if t is not None]
