"""Our side of the peer comparison: benchmarks/quantisation.py's rows on exactly the peer's ids file."""
import argparse, json, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ``benchmarks`` importable when run as a script

def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--rows", nargs="+", default=["wanda-50-uniform-w4", "sparsegpt-50-uniform-w4"])
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args(argv)
    from benchmarks import quantisation as q
    from benchmarks.common import Session
    q.ROWS.setdefault("wanda-50-uniform-w4", ("Wanda + uniform 50 % -> W4 GPTQ (mask kept)",
                                             dict(sparsity=0.5, method="wanda", allocation="uniform", bits=4)))
    q.ROWS.setdefault("sparsegpt-50-uniform-w4", ("SparseGPT + uniform 50 % -> W4 GPTQ (mask kept)",
                                                 dict(sparsity=0.5, method="sparsegpt", allocation="uniform", bits=4)))
    saved = torch.load(args.ids)
    cal, protocol = saved["calibration"], saved["protocol"]
    run_args = argparse.Namespace(nsamples=cal.shape[0], seqlen=cal.shape[1], seed=protocol["calibration"]["seed"],
                                  group_size=args.group_size, eval_seqlen=protocol["eval_seqlen"],
                                  max_windows=protocol["max_windows"])
    session = Session("smollm2-135m")
    seen = []
    session.model.get_input_embeddings().register_forward_hook(lambda _m, a, _o: seen.append(a[0].detach().clone()))
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.is_file() else []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            seen.clear()
            start_cpu = time.process_time()
            result = q.run_row(session, name, q.ROWS[name][1], run_args, Path(tmp))
            result["cpu_s_total"] = time.process_time() - start_cpu
            calib = torch.cat([s for s in seen if s.shape[-1] == cal.shape[1]][: cal.shape[0]]).reshape(cal.shape)
            result["calibration_ids_equal_file"] = bool(torch.equal(calib, cal))
            evals = [s for s in seen if s.shape[-1] == protocol["eval_seqlen"]][cal.shape[0]:]
            result["evaluation_ids_equal_file"] = bool(torch.equal(torch.cat(evals).reshape(saved["evaluation"].shape),
                                                                   saved["evaluation"])) if evals else None
            result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            import os
            result["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
            results.append(result)
            out.write_text(json.dumps(results, indent=2))
            print("run:", json.dumps(result), flush=True)

if __name__ == "__main__":
    main()
