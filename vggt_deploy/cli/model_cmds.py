"""`vggt-deploy train | eval | infer`: the PyTorch model and its evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vggt_deploy.cli.app import _command_line, main, resolve_model
from vggt_deploy.errors import UserError
from vggt_deploy.model.config import list_models
from vggt_deploy.outputs import check_output_path
from vggt_deploy.train import CLS_LOSSES


@main.command()
@click.option("--config", "model_name", type=click.Choice(list_models()), default="vggt_small", show_default=True,
              help="Registered model config to train (--model always names a model folder).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Model folder to write (weights, config, vocabulary, train_log.jsonl, checkpoint/).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="COCO folder to train on (instances.json, refs.json, images/); default: synthetic scenes.")
@click.option("--train-images", type=click.IntRange(1), default=40000, show_default=True,
              help="Number of synthetic training scenes (ignored with --data).")
@click.option("--steps", type=click.IntRange(1), default=6000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=float, default=4e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds Python, NumPy and torch; recorded.")
@click.option("--lambda-loc", type=float, default=1.0, show_default=True, help="Weight of L_loc (L1 + GIoU).")
@click.option("--lambda-ground", type=float, default=1.0, show_default=True, help="Weight of L_ground (contrastive).")
@click.option("--cls-loss", type=click.Choice(CLS_LOSSES), default="focal", show_default=True)
@click.option("--grounding-tokens", type=click.IntRange(1), default=None, help="Override N (a perfect square).")
@click.option("--grounding-layers", default=None, help="Override the grounding layers, e.g. '2,4,6'.")
@click.option("--no-bf16", is_flag=True, help="Train in float32 instead of bfloat16 autocast.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.")
def train(model_name, output, data_dir, train_images, steps, batch_size, lr, seed, lambda_loc, lambda_ground,
          cls_loss, grounding_tokens, grounding_layers, no_bf16, resume) -> None:
    """Train a VGGT with the blended loss L = L_cls + λ_loc·L_loc + λ_ground·L_ground."""
    from vggt_deploy.model.config import get_config
    from vggt_deploy.train.data import dataset_train_data, synthetic_train_data
    from vggt_deploy.train.loop import TrainConfig
    from vggt_deploy.train.loop import train as run_training
    from vggt_deploy.train.losses import LossWeights

    check_output_path(output, [data_dir], folder=True)
    overrides = {}
    if grounding_tokens is not None:
        overrides["num_grounding_tokens"] = grounding_tokens
    if grounding_layers:
        try:
            overrides["grounding_layers"] = tuple(int(v) for v in grounding_layers.split(","))
        except ValueError:
            raise UserError(f"--grounding-layers: expected comma-separated integers, got {grounding_layers!r}") from None
    cfg = get_config(model_name, **overrides)
    categories = None
    if data_dir is not None:
        from vggt_deploy.data.coco import load_coco

        dataset = load_coco(data_dir)
        data_ = dataset_train_data(dataset, cfg.preprocess)
        categories = dataset.category_names
        source = {"data": str(data_dir)}
    else:
        data_ = synthetic_train_data(train_images, cfg.preprocess)
        source = {"data": f"synthetic train split, {train_images} images"}
    source["train_command"] = _command_line(click.get_current_context())
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, bf16=not no_bf16,
                            loss=LossWeights(lambda_loc=lambda_loc, lambda_ground=lambda_ground, cls_loss=cls_loss))
    path = run_training(cfg, data_, train_cfg, output, categories=categories, resume=resume, extra_meta=source)
    click.echo(f"model written to {path}")




@main.command("eval")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder (model.safetensors, config.json, vocab.json); with --onnx it supplies the query encoder.")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None,
              help="Evaluate this ONNX file (FP32 or QDQ) with ONNX Runtime on the CPU instead of PyTorch.")
@click.option("--openvino", "ov_path", type=click.Path(path_type=Path), default=None,
              help="Evaluate with OpenVINO on the CPU: an .onnx or IR .xml file, or a folder written by build-ov.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="COCO folder to evaluate; default: the synthetic eval split (generated on first use).")
@click.option("--eval-images", type=click.IntRange(1), default=1000, show_default=True,
              help="Size of the synthetic eval split, or a limit on --data.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--write-card", is_flag=True, help="Also (re)write MODEL_CARD.md and training_curve.png in the model folder.")
@click.option("--executor", "executor_spec", default="local", show_default=True, metavar="local|ray[:ADDRESS]",
              help="Where the shards run: local, or ray / ray:ADDRESS (`pip install 'vggt-deploy[ray]'`). Any "
                   "executor but local, or --shard-images, evaluates shard by shard (finished shards are cached, so "
                   "an interrupted run resumes); the detections are merged before one COCO evaluation, so the "
                   "metrics equal the unsharded run's.")
@click.option("--shard-images", type=click.IntRange(1), default=None,
              help="Images per shard (rounded up to whole batches); default 256 when sharding.")
def evaluate_cmd(model_dir: Path, onnx_file: Path | None, ov_path: Path | None, data_dir: Path | None,
                 eval_images: int, batch_size: int, as_json: bool, write_card: bool, executor_spec: str,
                 shard_images: int | None) -> None:
    """Grounding mAP (pycocotools), referring-expression accuracy and top-1/top-5."""
    from vggt_deploy.executor import check_executor

    check_executor(executor_spec)
    sharded = executor_spec != "local" or shard_images is not None
    from vggt_deploy.bench.evaluate import evaluate
    from vggt_deploy.data.coco import load_coco, synthetic_split
    from vggt_deploy.model.io import load_model

    model_dir = resolve_model(model_dir)
    loaded = load_model(model_dir)
    infer = None
    if onnx_file is not None:
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner
        from vggt_deploy.bench.evaluate import runner_infer
        from vggt_deploy.graph.onnx_io import get_metadata, load_onnx

        meta = get_metadata(load_onnx(onnx_file))
        if meta.get("vggt.config_hash") != loaded.model.cfg.config_hash():
            raise UserError(f"{onnx_file}: exported from config {meta.get('vggt.config_hash', 'unknown')}, but "
                            f"{model_dir} has config {loaded.model.cfg.config_hash()}; pass the matching --model")
        if not sharded:
            infer = runner_infer(OrtRunner(onnx_file, name=onnx_file.name).activate())
        if write_card:
            raise UserError("--write-card describes a PyTorch model folder; drop --onnx")
    if ov_path is not None:
        from vggt_deploy.backends.openvino.runner import OvRunner
        from vggt_deploy.bench.evaluate import runner_infer

        if onnx_file is not None or write_card:
            raise UserError("--openvino runs the model in OpenVINO; drop --onnx and --write-card")
        runner = OvRunner(ov_path, name=ov_path.name).activate()
        config_hash = runner.metadata.get("vggt.config_hash")
        if config_hash != loaded.model.cfg.config_hash():
            raise UserError(f"{ov_path}: exported from config {config_hash or 'unknown'}, but "
                            f"{model_dir} has config {loaded.model.cfg.config_hash()}; pass the matching --model")
        infer = None if sharded else runner_infer(runner)
        if sharded:
            runner.close()
    if data_dir is None:
        dataset = load_coco(synthetic_split("eval", eval_images))
        limit = None
    else:
        dataset = load_coco(data_dir)
        limit = eval_images
    if sharded:
        from vggt_deploy.bench.sharded_eval import evaluate_sharded
        from vggt_deploy.executor import make_executor
        from vggt_deploy.paths import cache_dir

        backend = "onnxruntime" if onnx_file is not None else "openvino" if ov_path is not None else "torch"
        with make_executor(executor_spec, cache_dir() / "eval_shards") as executor:
            metrics = evaluate_sharded(executor, model_dir, dataset.root, backend, onnx_file or ov_path, limit,
                                       batch_size, shard_images or 256, progress=not as_json)
    else:
        metrics = evaluate(loaded, dataset, infer=infer, batch_size=batch_size, limit=limit, progress=not as_json)
    metrics.pop("detections")
    if write_card:
        from vggt_deploy.model.card import write_model_card

        command = "vggt-deploy eval --model " + str(model_dir) + (f" --data {data_dir}" if data_dir else "")
        if data_dir is None and eval_images != 1000:
            command += f" --eval-images {eval_images}"
        write_model_card(model_dir, metrics, command)
    metrics = {"model": str(onnx_file or ov_path or model_dir), "data": str(dataset.root), **metrics}
    if as_json:
        click.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        click.echo(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")


if __name__ == "__main__":
    main()


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder (runs in PyTorch; with --onnx it supplies the tokenizer and query encoder).")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), default=None, help="Run this ONNX file with ONNX Runtime.")
@click.option("--engine", "engine_file", type=click.Path(path_type=Path), default=None,
              help="Run this TensorRT engine (built by build-trt; needs TensorRT and pycuda).")
@click.option("--openvino", "ov_path", type=click.Path(path_type=Path), default=None,
              help="Run with OpenVINO on the CPU: an .onnx or IR .xml file, or a folder written by build-ov.")
@click.option("--image", "image_path", type=click.Path(path_type=Path), required=True)
@click.option("--query", "-q", "queries", multiple=True, required=True,
              help='A class name or referring expression; repeat for several ("red circle").')
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("build/infer"), show_default=True,
              help="Folder for IMAGE_STEM.json and IMAGE_STEM.png (other files there are left alone).")
def infer(model_dir, onnx_file, engine_file, ov_path, image_path, queries, output) -> None:
    """Ground text queries in one image: boxes and scores as JSON, and an annotated PNG."""
    from vggt_deploy.data.preprocess import read_image
    from vggt_deploy.infer import ground, output_names, write_outputs
    from vggt_deploy.model.io import load_model

    model_dir = resolve_model(model_dir)
    check_output_path(output, [image_path, model_dir, onnx_file, engine_file, ov_path], folder=True,
                      files=output_names(image_path.stem), inputs_inside_ok=True)
    loaded = load_model(model_dir)
    image = read_image(image_path)
    if sum(p is not None for p in (onnx_file, engine_file, ov_path)) > 1:
        raise UserError("give only one of --onnx, --engine and --openvino")
    if ov_path is not None:
        from vggt_deploy.backends.openvino.runner import OvRunner

        runner = OvRunner(ov_path, name=ov_path.name)
    elif engine_file is not None:
        from vggt_deploy.backends.tensorrt.runner import TrtRunner

        runner = TrtRunner(engine_file, name=engine_file.name)
    elif onnx_file is not None:
        from vggt_deploy.backends.onnxruntime.runner import OrtRunner

        runner = OrtRunner(onnx_file, name=onnx_file.name)
    else:
        from vggt_deploy.backends.torch.runner import TorchRunner

        runner = TorchRunner(model_dir)
    with runner:
        results = ground(runner, loaded, image, list(queries))
    json_path, png_path = write_outputs(output, image_path.stem, image, results)
    for r in results:
        click.echo(f"{r.query!r}: box {r.box} score {r.score:.3f}")
    click.echo(f"wrote {json_path} and {png_path}")


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option("--image", "image_path", type=click.Path(path_type=Path), default=None,
              help="Image to explain (default: the first eval-split scene).")
@click.option("--query", "-q", "queries", multiple=True, help="Queries (default: the image's referring expressions).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("build/maps/maps.png"),
              show_default=True)
def maps(model_dir, image_path, queries, output) -> None:
    """Grounding maps: each answering token's attention over the image, as captioned heatmaps (PNG)."""
    from vggt_deploy.bench.maps import grounding_maps, write_maps
    from vggt_deploy.data.preprocess import read_image
    from vggt_deploy.model.io import load_model

    model_dir = resolve_model(model_dir)
    check_output_path(output, [image_path, model_dir])
    loaded = load_model(model_dir)
    if image_path is None:
        from vggt_deploy.data.coco import load_coco, synthetic_split

        dataset = load_coco(synthetic_split("eval", 1000))
        record = dataset.records[0]
        image = dataset.image(record)
        queries = queries or tuple(s for s, _ in record.refs)
    else:
        image = read_image(image_path)
    if not queries:
        raise UserError("give at least one --query for your own image")
    items = grounding_maps(loaded, image, list(queries))
    path = write_maps(image, items, output)
    for item in items:
        click.echo(f"{item['query']!r}: token {item['token']} (score {item['score']:.2f})")
    click.echo(f"wrote {path}")
