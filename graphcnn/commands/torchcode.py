"""export-torch: a spec as a readable PyTorch module (graphcnn/deploy/torchcode). The output
is never the spec itself: fileio refuses a command's own inputs as its outputs."""
from __future__ import annotations

import re

from ..api import check_spec, load_spec
from .args import limits, spec_arg
from .output import out
from .registry import command, configure


@command("export-torch", "write a spec as a PyTorch module whose state_dict takes "
                         "export-weights' .npz")
def cmd_export_torch(args) -> int:
    from ..deploy.torchcode import torch_code
    from ..fileio import write_text_atomic

    spec = load_spec(args.spec)
    checked = check_spec(spec, limits(args))
    text = torch_code(checked, args.spec)
    write_text_atomic(args.output, text)
    classes = re.findall(r"^class (\w+)\(nn\.Module\)", text, re.M)
    out(f"wrote {args.output}: class {classes[-1]} and {len(classes) - 1} block class(es), "
        f"{checked.reaching_outputs().total_params:,} parameters")
    return 0


@configure(cmd_export_torch)
def _export_torch_args(p):
    spec_arg(p)
    p.add_argument("-o", "--output", required=True, help="the .py file to write")

