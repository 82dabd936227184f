"""The model card: what a model is, how it was made, how good it is, and what it must not be used for."""

from __future__ import annotations


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def threshold_cell(check: dict) -> str:
    """`>= 0.8`; `n/a` for a check without a numeric threshold (class_set, or one not applicable)."""
    return "n/a" if check["threshold"] is None else f"{check['comparison']} {fmt(check['threshold'])}"


def checks_table(decision: dict) -> list[str]:
    """The gate's checks as markdown table lines."""
    return [
        "| check | value | threshold | verdict |",
        "|---|---|---|---|",
        *(f"| {c['name']} | {fmt(c['value'])} | {threshold_cell(c)} | {c['verdict']} |" for c in decision["checks"]),
    ]


def champion_lines(decision: dict) -> list[str]:
    """The comparison with the serving champion: both accuracies, the discordant images, the test's verdict."""
    score, class_set = decision.get("champion"), decision.get("class_set")
    if class_set is None:
        return ["- no champion was serving: nothing to compare against"]
    lines = []
    if class_set["added"] or class_set["removed"]:
        allowed = "allowed" if class_set["allowed"] else "not allowed (gate.allow_class_change: false)"
        added, removed = ", ".join(class_set["added"]) or "-", ", ".join(class_set["removed"]) or "-"
        lines.append(
            f"- classes differ from champion `{class_set['champion_tag']}`: added {added}, removed {removed}; {allowed}"
        )
    else:
        lines.append(f"- same classes as champion `{class_set['champion_tag']}`")
    if score is not None:
        worse = score["p_value"] < score["alpha"]
        lines += [
            f"- {score['metric']} on the same {score['n_images']} test images: "
            f"candidate {fmt(score['candidate_value'])}, champion {fmt(score['champion_value'])}",
            f"- right only by the candidate: {score['candidate_only_correct']} images; only by the champion: "
            f"{score['champion_only_correct']}",
            f"- {score['test']}: p = {fmt(score['p_value'])}, alpha = {fmt(score['alpha'])} "
            f"({'worse beyond chance: rejected' if worse else 'no significant regression'})",
        ]
    return lines


SCORE_NAMES = {
    "mahalanobis": (
        "Mahalanobis distance of pooled features to the nearest class, summed over backbone depths "
        "(fitted on training images, each depth standardised on validation images)"
    ),
    "energy": "energy of the logits",
    "msp": "maximum softmax probability",
}


def ood_lines(ood: dict | None) -> list[str]:
    if not ood:
        return []
    return [
        "## Out-of-distribution flag",
        "",
        f"- score: {SCORE_NAMES.get(ood['method'], ood['method'])}; flagged above {ood['threshold']:.4g}, the "
        "threshold that flags the stated share of validation images (export.ood_rejection_rate)",
        f"- AUROC against class-free images ({', '.join(ood['far_sets'])}): {fmt(ood['far_auroc'])} pooled; "
        + ", ".join(f"{name} {fmt(value)}" for name, value in ood.get("far_auroc_by_set", {}).items()),
        f"- AUROC against shifted test images (blur, brightness, rotation, noise): {fmt(ood['near_auroc'])}",
        "",
    ]


def advice_lines(advice: dict | None) -> list[str]:
    """Why `auto` chose this recipe and/or backbone (models/advice.json): the signals, the rule's conditions
    that fired, the accuracy the study's cells like this one reached, the candidates compared. Empty when
    the user chose."""
    if not advice:
        return []
    lines = ["## How the recipe was chosen", ""]
    if "recipe" in advice:
        low, high = advice["expected_accuracy"]
        lines += [
            f"`strategy: auto` chose **{advice['recipe']}**: "
            + (" and ".join(advice.get("path", [])) or "the study's best recipe overall")
            + f"; expected test accuracy {low:.2f}-{high:.2f} (the range the study's cells behind the choice "
            f"reached, as a gain over this data's linear probe); estimated {advice['estimated_seconds']:.0f} s"
            + (f" within a {advice['budget_seconds']:.0f} s budget" if advice.get("budget_seconds") else "")
            + ".",
            "",
            "- signals: "
            + ", ".join(
                f"{name} {'not measured (the rule does not read it)' if value is None else fmt(value)}"
                for name, value in advice.get("signals", {}).items()
            ),
            "- resolved params: " + ", ".join(f"{key}={value}" for key, value in advice.get("params", {}).items()),
            *(f"- {note}" for note in advice.get("notes", [])),
            "",
        ]
    choice = advice.get("backbone_choice")
    if choice:
        lines += [
            f"`backbone: auto` chose **{choice['chosen']}**, compared on {choice['compared_on']}:",
            "",
            "| backbone | expected accuracy | recipe | probe | k-NN | LogME |",
            "|---|---|---|---|---|---|",
            *(
                f"| {c['backbone']} | {fmt(c['expected_accuracy'])} | {c.get('recipe') or 'as set'} | "
                f"{fmt(c['signals'].get('probe_accuracy'))} | {fmt(c['signals'].get('knn_accuracy'))} | "
                f"{fmt(c['signals'].get('logme'))} |"
                for c in choice["candidates"]
            ),
            "",
        ]
    return lines


def environment_lines(run_record: dict | None) -> list[str]:
    """Where and how the model was trained, from the train stage's run record (metrics/train_run.json)."""
    if not run_record or "environment" not in run_record:
        return ["No run record: the training machine is unknown."]
    env = run_record["environment"]
    cpu, caps, versions = env.get("cpu", {}), env.get("caps", {}), env.get("versions", {})
    if env.get("reproducible"):
        if not env.get("pinned"):
            pinned = "asked for, but the process was not started pinned (caps not applied)"
        elif env.get("reproducible") == "portable":
            pinned = "yes, portable: convolutions off oneDNN, meant to give these bytes on any x86-64 CPU"
        else:
            pinned = "yes, for CPUs of this kind (oneDNN's convolutions may sum differently on another kind)"
    else:
        pinned = "no (kernels as this CPU picks them: another CPU may give other bytes)"
    return [
        f"- reproducible math: {pinned}",
        f"- model.pt sha256: `{run_record.get('model_sha256')}`",
        f"- CPU: {cpu.get('model', 'unknown')}; ISA flags: {' '.join(cpu.get('isa', [])) or 'n/a'}",
        f"- kernels: ATen {env.get('aten_cpu_capability')}; caps: "
        + (", ".join(f"{k}={v}" for k, v in caps.items() if v) or "none"),
        f"- threads: {env.get('threads')}; deterministic algorithms: {env.get('deterministic_algorithms')}; "
        f"MKL: {'yes' if env.get('mkl') else 'no'} ({versions.get('mkl')}); oneDNN {versions.get('onednn')}",
        f"- device: {env.get('device')}" + (f" ({env['gpu']})" if env.get("gpu") else ""),
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v and k not in ("mkl", "onednn")),
        f"- wall time {fmt(run_record.get('wall_seconds'))} s; "
        f"resumed from epoch {run_record.get('resumed_from_epoch')}",
        *distributed_lines(run_record.get("distributed")),
    ]


def distributed_lines(distributed: dict | None) -> list[str]:
    """How a data-parallel run was shared out (the run record's `distributed`); nothing for one process."""
    if not distributed:
        return ["- processes: 1"]
    return [
        f"- processes: {distributed['processes']} ({distributed['processes_per_machine']} per machine, "
        f"{distributed['backend']}), {distributed['images_per_process_per_step']} images per process per step; "
        f"BatchNorm: {distributed['batchnorm']}"
    ]


def render_model_card(
    model_meta: dict,
    metrics: dict,
    export_report: dict,
    decision: dict,
    lineage: dict,
    run_record: dict | None = None,
) -> str:
    classes = model_meta.get("classes", [])
    train_params = model_meta.get("params", {})
    lines = [
        f"# Model card: {model_meta.get('backbone', 'unknown')} ({model_meta.get('strategy', 'unknown')})",
        "",
        "## Decision",
        "",
        f"**{'PASSED' if decision['passed'] else 'REJECTED'}** by the deployment gate. {decision['reason']}",
        "",
        *checks_table(decision),
        "",
        "## Against the serving champion",
        "",
        *champion_lines(decision),
        "",
        "## Lineage",
        "",
        f"- data version: `{lineage.get('data_version')}` (raw data md5 `{lineage.get('raw_data_md5')}`)",
        f"- git commit: `{lineage.get('git_commit')}`; params digest `{lineage.get('params_digest')}`",
        f"- backbone: {model_meta.get('backbone')}, ImageNet-pretrained: {train_params.get('pretrained', 'n/a')}",
        f"- transfer strategy: {model_meta.get('strategy')}"
        + (" (chosen by `strategy: auto`, see below)" if model_meta.get("advice") else ""),
        f"- input: {model_meta.get('preprocess', {}).get('image_size')} px RGB, "
        f"{model_meta.get('preprocess', {}).get('resize')} resize, ImageNet mean/std normalisation",
        "",
        *advice_lines(model_meta.get("advice")),
        "## Training environment",
        "",
        *environment_lines(run_record),
        "",
        "## Training parameters",
        "",
        "```",
        *(f"{key}: {value}" for key, value in sorted(train_params.items())),
        "```",
        "",
        f"## Test metrics ({metrics.get('n')} held-out images)",
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {name} | {fmt(metrics.get(name))} |"
            for name in (
                "accuracy",
                "top_k_accuracy",
                "macro_precision",
                "macro_recall",
                "macro_f1",
                "min_class_recall",
                "roc_auc_ovr",
                "log_loss",
                "ece",
            )
        ),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | {m['support']} |"
            for name, m in metrics.get("per_class", {}).items()
        ),
        "",
        "## ONNX export",
        "",
        f"- opset {export_report.get('opset')}, dynamic batch axis, {export_report.get('model_bytes', 0) / 1e6:.2f} MB",
        *(
            f"- parity at batch {p['batch_size']}: max |logit diff| {p['max_abs_diff']:.3g}, "
            f"top-1 agreement {p['top1_agreement']:.4f}"
            for p in export_report.get("parity", [])
        ),
        f"- CPU latency at batch 1: p50 {export_report.get('latency', {}).get('p50_ms', 0):.2f} ms, "
        f"p95 {export_report.get('latency', {}).get('p95_ms', 0):.2f} ms",
        f"- INT8 variant: {export_report.get('int8', {}).get('summary', 'not built')}",
        "",
        *ood_lines(export_report.get("ood")),
        "## Intended use and limits",
        "",
        f"- Classifies an image into one of {len(classes)} classes: {', '.join(classes)}.",
        "- Every answer still names one of these classes; the `out_of_distribution` flag says when an image",
        "  looks unlike the training data (see above), and callers should treat flagged answers as unknown.",
        "- Only as good as its data: performance on images unlike the training data (other sources,",
        "  lighting, framing, resolution) is unknown until measured on such images.",
        "- Not for decisions about people without human review.",
        "",
    ]
    return "\n".join(lines)
