"""Randomized smoothing of the final checkpoints: CERTIFY's certified radii and the base
classifier's accuracy under Gaussian noise: ``analysis/certify.json``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.certify_units import CertifyConfig
from awp_landscape.commands.certify import measure_certify
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "certify.json"


def config(plan: Any) -> CertifyConfig:
    return CertifyConfig(
        sigmas=plan.certify_sigmas,
        n0=plan.certify_n0,
        n=plan.certify_samples,
        n_test=plan.certify_n,
        noise_levels=plan.certify_noise_levels,
        noise_draws=plan.certify_noise_draws,
    )


def run(ctx: Context) -> None:
    measure_certify(
        ctx.last,
        config(ctx.plan),
        out=ctx.path(STAGE).parent,
        labels=ctx.labels,
        sources=ctx.sources(),
    )


read = json_reader((FILE,))


def section(res: Results) -> Section:
    from figures.certify import plot_certified_accuracy
    from figures.html import FigureBlock, Section, Table

    s = Section("Certified robustness (randomized smoothing)")
    summary = res["certify"]["summary"]
    r = summary[0]
    s.paragraphs.append(
        f"The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), of each "
        f"final checkpoint, certified by CERTIFY (Cohen, Rosenfeld, Kolter 2019): n0 = {r['n0']} "
        f"selection and n = {r['n']} estimation samples per image, a one-sided Clopper-Pearson "
        f"bound on pA at alpha = {r['alpha']:g}, radius sigma Phi^-1(pA_lower) in L2 pixel units "
        f"([0,1] scale), abstention when pA_lower < 1/2; {r['examples']} test images per sigma, "
        f"the same images and the same noise for every checkpoint. The published protocol uses "
        f"n = 100,000 on 500 images; with n = {r['n']} no radius can exceed "
        f"{r['max_radius'] / r['sigma']:.2f} sigma. Smoothing is usually applied to a base "
        f"classifier trained with Gaussian data augmentation (awp train --noise-sd); "
        f"adversarially trained ones test the rebuttal's claim as it is stated."
    )
    radii = sorted({k for row in summary for k in row if k.startswith("acc@")},
                   key=lambda k: float(k[4:]))  # fmt: skip
    s.tables.append(
        Table(
            summary,
            columns=[
                "label",
                "sigma",
                "examples",
                "accuracy",
                "abstained",
                *radii,
                "acr",
                "noise_acc",
            ],
            caption="Certified accuracy at L2 radius r (acc@r), average certified radius "
            "(acr) and the base classifier's accuracy on the n noisy copies (noise_acc)",
        )  # fmt: skip
    )
    s.figures.append(
        FigureBlock.from_figure(
            plot_certified_accuracy(res["certify"]["examples"], summary=summary),
            "Certified accuracy against L2 radius, one panel per sigma (dotted: the largest "
            "radius n samples can certify).",
            "certified accuracy",
        )
    )
    return s


def noise_section(res: Results) -> Section:
    from figures.certify import plot_noise_accuracy
    from figures.html import FigureBlock, Section, Table

    s = Section("Accuracy under Gaussian input noise")
    noise = res["certify"]["noise_accuracy"]
    s.paragraphs.append(
        f"The rebuttal's premise: the base classifier's accuracy on x + N(0, s^2 I) "
        f"({noise[0]['draws']} noisy copies of each of {noise[0]['examples']} test images per "
        f"level, the same for every checkpoint; intervals over images)."
    )
    s.tables.append(
        Table(
            noise,
            columns=["label", "level", "accuracy", "low", "high"],
            caption="Accuracy under Gaussian noise",
        )  # fmt: skip
    )
    s.figures.append(
        FigureBlock.from_figure(
            plot_noise_accuracy(noise),
            "Accuracy of the base classifier under Gaussian input noise of standard deviation s.",
            "accuracy under noise",
        )
    )
    return s


STAGE = Stage(
    name="certify",
    heading="randomized smoothing: certified radius, accuracy under noise",
    files=(FILE,),
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Certified robustness",
            lambda r: r["certify"].get("summary"),
            section,
            "analysis/certify.json (awp certify)",
        ),
        ReportSection(
            "Accuracy under Gaussian input noise",
            lambda r: r["certify"].get("noise_accuracy"),
            noise_section,
            "analysis/certify.json with --noise-draws > 0 (awp certify)",
        ),
    ),
)
