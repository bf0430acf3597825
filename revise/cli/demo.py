"""`revise demo`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from revise.cli._common import device_option, echo, seed_option


@click.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("revise-demo"),
    show_default=True,
    help="Folder for the demo site, models, run and report.",
)
@device_option
@seed_option
@click.pass_context
def demo(ctx: click.Context, out: Path, device: str, seed: int) -> None:
    """Run the whole revision path on a built-in DICOM site (digits, two devices)."""
    from revise._io.outputs import check_output
    from revise.export.parity import require_onnxruntime
    from revise.stages.demo import FORGET, format_table, run_demo

    check_output(out, overwrite=True, option="out")  # new, empty, or an earlier demo's folder
    require_onnxruntime()  # the demo exports and checks ONNX parity: say so before any work
    say = echo(ctx)
    say(f"revise demo: forget every image of one device ({FORGET}) in {out}/")
    t0 = time.perf_counter()
    result = run_demo(out, device=device, seed=seed, say=say)
    total = time.perf_counter() - t0
    auto = result.table["auto"]
    click.echo(
        f"\nauto chose {auto['chosen']}, aiming under {auto['aimed_under']}; estimated distance "
        f"to a retrained model {auto['estimated_distance']:.3f}"
    )
    if auto["note"]:
        click.echo(f"note: {auto['note']}")
    click.echo(
        "\naccuracy on the rows the revision did not calibrate on (original = deployed, "
        "revised = after auto, retrained = reference):"
    )
    click.echo(format_table(result.table))
    parity = result.table["parity"]
    click.echo(
        f"\nONNX parity on {parity['n']} held-out images: max |diff| "
        f"{parity['max_abs_diff']:.2e}, labels agree {parity['label_agreement']:.3f}"
    )
    int8 = result.table.get("int8_parity")
    if int8:
        click.echo(
            f"INT8 variant (model.int8.onnx) on the same images: labels agree "
            f"{int8['label_agreement']:.3f} with PyTorch, max |diff| {int8['max_abs_diff']:.2e}"
        )
    validation = result.table["validation"]
    click.echo(
        f"acceptance gates ({out / 'gates.yaml'}): {validation['verdict'].upper()}, "
        f"{validation['summary']}; report: {validation['report']}"
    )
    for name in validation["failed"]:
        click.echo(f"  failed: {name}")
    signature = result.table["signature"]
    if signature is None:
        click.echo(f"bundle {result.table['bundle']} left unsigned: it failed its acceptance gates")
    else:
        status = "verified" if signature["verified"] else "NOT VERIFIED"
        click.echo(
            f"signed bundle {result.table['bundle']}: {status}, {signature['files']} files "
            f"(revise verify {result.table['bundle']} --pub {signature['public_key']})"
        )
    click.echo(f"total wall-clock {total:.1f} s; table: {out / 'demo_report.json'}")
    if signature is None:  # the revision did not pass: say so with the exit status too
        ctx.exit(1)


COMMANDS = [demo]
