"""Command-line client for the prediction service, over plain HTTP.

    python -m serving.client cat.jpg                      # POST /classify
    python -m serving.client a.jpg b.png --top-k 3        # several images: one POST /classify_batch
    python -m serving.client cat.jpg --url http://host:3000 --token "$TRANSFERLINE_API_TOKEN" --json

The same calls with BentoML's Python client (it reads the service's /schema.json):

    import bentoml
    from pathlib import Path

    with bentoml.SyncHTTPClient("http://127.0.0.1:3000", token=None) as client:  # token: the API token, if set
        client.classify(image=Path("cat.jpg"), top_k=3)        # -> {"model_tag", "data_version", "predictions"}
        client.classify_batch(images=[Path("a.jpg"), Path("b.png")])   # -> {..., "results": [...]}
        client.metadata()

And with curl: `curl -F image=@cat.jpg http://127.0.0.1:3000/classify`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from serving.auth import TOKEN_ENV
from transferline.cli import cli_parser, run_command
from transferline.errors import TransferlineError

DEFAULT_URL = "http://127.0.0.1:3000"


class ClientError(TransferlineError):
    """The service could not be reached or refused the request; the message says which and why."""


def classify(paths: list[Path], url: str = DEFAULT_URL, top_k: int | None = None, token: str | None = None) -> dict:
    """One image -> /classify, several -> /classify_batch; returns the service's JSON answer."""
    many = len(paths) > 1
    field, route = ("images", "/classify_batch") if many else ("image", "/classify")
    files = [(field, (path.name, path.read_bytes())) for path in paths]
    data = {"top_k": str(top_k)} if top_k is not None else {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(url.rstrip("/") + route, files=files, data=data, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the service at {url}: {exc}") from None
    if response.status_code != 200:
        try:
            body = response.json()
            message = f"{body.get('error')} ({json.dumps(body.get('detail'))})"
        except ValueError:
            message = response.text[:300]
        raise ClientError(f"{route} answered {response.status_code}: {message}")
    return response.json()


def render(paths: list[Path], answer: dict) -> str:
    results = answer.get("results", [answer])
    lines = []
    for path, result in zip(paths, results, strict=True):
        if "out_of_distribution" in result:
            flag = "OUT OF DISTRIBUTION" if result["out_of_distribution"] else "in distribution"
            lines.append(f"{path}: {flag} (OOD score {result['ood_score']:.2f})")
        else:
            lines.append(f"{path}:")
        lines.extend(f"  {p['probability']:8.4f}  {p['label']}" for p in result["predictions"])
    lines.append(f"model {answer['model_tag']}, trained on data {answer['data_version']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Classify images with the transferline prediction service.")
    parser.add_argument("images", nargs="+", type=Path, help="image files (several: one batch request)")
    parser.add_argument("--url", default=os.environ.get("TRANSFERLINE_URL", DEFAULT_URL), help=f"default {DEFAULT_URL}")
    parser.add_argument("--top-k", type=int, default=None, help="labels per image (default: the service's)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"API token (default: ${TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer as it is")
    return parser


def classify_command(args: argparse.Namespace) -> None:
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise ClientError(f"no such file: {', '.join(missing)}")
    answer = classify(args.images, args.url, args.top_k, args.token)
    print(json.dumps(answer, indent=2) if args.json else render(args.images, answer))


def main(argv: list[str] | None = None) -> int:
    return run_command(classify_command, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
