"""``vidiff serve``: the web demo (:mod:`vidiff.serve`) on a local port.

``add_parser(sub)`` registers the sub-command on the ``vidiff`` parser and ``run(args)`` executes it. Neither torch nor
gradio is imported until ``run``, so ``vidiff --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys

from .cli_common import check_model_folder, describe_error, positive_int, resolve_model


def port_arg(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (1 to 65535), got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1 to 65535), got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve a web demo: text to video, image to video, text to image (gradio)",
        description="Serve a web page with three tabs (text to video, image to video, text to image) on "
                    "http://HOST:PORT. It loads nothing from the internet; one generation runs at a time. "
                    "Needs the serve extra: pip install 'vidiff[serve]'.",
    )
    p.add_argument("--t2v-model", help="text-to-video model folder (default: the embedded shapes-world model)")
    p.add_argument("--i2v-model", help="image-to-video model folder (default: the embedded shapes-world model)")
    p.add_argument("--t2i-model", help="text-to-image model folder (default: the embedded shapes-world model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=port_arg, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: the cores idle when each generation starts)")
    return p


def run(args: argparse.Namespace) -> int:
    for model, kind in ((args.t2v_model, "t2v"), (args.i2v_model, "i2v"), (args.t2i_model, "t2i")):
        check_model_folder(resolve_model(model, kind))  # a wrong folder fails before the slow imports
    try:
        from .serve import PortInUseError, launch
    except ImportError as err:
        print(f"vidiff serve: error: {describe_error(err)}; install the web demo with pip install 'vidiff[serve]'",
              file=sys.stderr)
        return 2
    try:
        launch(args.t2v_model, args.i2v_model, args.t2i_model, host=args.host, port=args.port, threads=args.threads)
    except PortInUseError as err:
        print(f"vidiff serve: error: {err}", file=sys.stderr)
        return 2
    return 0
