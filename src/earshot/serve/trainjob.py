"""Child-process entry point of a training job: `python -m earshot.serve.trainjob SPEC.json`.

Runs `earshot.train(data, out=..., **options)` and writes `result.json` next to the spec (ok, bundle, error).
Kept out of the server process because training imports torch.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import traceback
from pathlib import Path


def main(spec_path: str) -> int:
    spec_file = Path(spec_path)
    spec = json.loads(spec_file.read_text())
    result_file = spec_file.with_name("result.json")
    t0 = time.time()
    try:
        import earshot

        options = dict(spec.get("options") or {})
        options.setdefault("name", spec.get("name"))  # the card's name = the model's name in /v1/models
        params = inspect.signature(earshot.train).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            dropped = sorted(set(options) - set(params))
            if dropped:
                print(f"ignoring options earshot.train does not take: {dropped}", flush=True)
            options = {k: v for k, v in options.items() if k in params}
        bundle = earshot.train(spec["data"], out=spec["out"], **options)
        result = {"ok": True, "bundle": str(bundle or spec["out"]), "seconds": round(time.time() - t0, 3)}
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the job, whatever it is
        traceback.print_exc()
        err = (
            e.to_dict()
            if hasattr(e, "to_dict")
            else {"type": type(e).__name__, "reason": "internal", "message": str(e) or type(e).__name__}
        )
        result = {"ok": False, "error": err, "seconds": round(time.time() - t0, 3)}
        code = 1
    result_file.write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
