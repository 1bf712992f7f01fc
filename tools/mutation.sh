#!/usr/bin/env bash
# Mutation score of the modules that carry the paper's rules, each against its FAST tests.
#
#   tools/mutation.sh                 # every module, from scratch
#   tools/mutation.sh chips coco      # some modules
#   tools/mutation.sh --keep softnms  # reuse the generated mutants and mutmut's stats (tests rerun)
#   MUTATION_SAMPLE=10 tools/mutation.sh chips   # every 10th mutant only (a sampled score)
#   tools/mutation.sh --retry chips   # rerun only the mutants the last run did not kill (new tests)
#   tools/mutation.sh --report        # print the last results again, run nothing
#
# Modules: chips rpn roi_heads softnms merge coco (coco: only the category-mapping functions).
# Slow (minutes per module on 2 cores) and NOT part of CI. Needs `pip install mutmut` (3.x).
#
# Each module runs in its own work dir, mutants-work/<module>/ (git-ignored): links to sniper/
# and tests/ plus a generated setup.cfg with the module's [mutmut] config and a [tool:pytest]
# section (a per-test timeout; no pyproject.toml there, so mutmut reads setup.cfg). mutmut copies
# them to mutants-work/<module>/mutants/, where it keeps its mutants and cache. Inspect one:
#   cd mutants-work/chips && ../../.venv/bin/mutmut show 'sniper.chips.x__mix__mutmut_3'
# Hypothesis runs the "mutation" profile of tests/conftest.py (few, derandomized examples).
#
# Output: one line per module: total, killed, survived, timeout, suspicious, no tests, the
# reviewed-equivalent survivors (EQUIVALENT below) and score = killed / (total - equivalent);
# then the surviving mutants that are not marked equivalent. The table and the reasons for the
# equivalent ones are in docs/results.md, "Mutation score (core modules)". Mutant names number
# the mutations of a function in order, so an edit of that function can shift them.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
MUTMUT=${MUTMUT:-$ROOT/.venv/bin/mutmut}
WORK=${MUTATION_WORK:-$ROOT/mutants-work}
JOBS=${MUTATION_JOBS:-$(nproc)}
TEST_TIMEOUT=${MUTATION_TEST_TIMEOUT:-120}
SAMPLE=${MUTATION_SAMPLE:-1}  # test every SAMPLE-th mutant of each module (1: all of them)
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-mutation}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1

KEEP=0
RETRY=0
REPORT=0
MODULES=()
for a in "$@"; do
    case "$a" in
        --keep) KEEP=1 ;;
        --retry) KEEP=1 RETRY=1 ;;
        --report) KEEP=1 REPORT=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
        *) MODULES+=("$a") ;;
    esac
done
ALL=(chips rpn roi_heads softnms merge coco)
[ ${#MODULES[@]} -eq 0 ] && MODULES=("${ALL[@]}")

[ -x "$MUTMUT" ] || { echo "mutmut not found at $MUTMUT (.venv/bin/pip install mutmut)" >&2; exit 2; }

# module -> files to mutate, fast tests, mutant-name globs ("" = every mutant of the files)
declare -A FILES TESTS GLOBS
FILES[chips]="sniper/chips.py"
TESTS[chips]="tests/test_chips.py"
FILES[rpn]="sniper/model/rpn.py"
TESTS[rpn]="tests/test_model_labels.py"
FILES[roi_heads]="sniper/model/roi_heads.py"
TESTS[roi_heads]="tests/test_model_labels.py"
FILES[softnms]="sniper/ops/softnms.py"
TESTS[softnms]="tests/test_softnms.py"
FILES[merge]="sniper/ops/merge.py"
TESTS[merge]="tests/test_merge.py tests/test_softnms.py"
FILES[coco]="sniper/data/coco.py"
TESTS[coco]="tests/test_category_mapping.py tests/data/test_coco.py"
GLOBS[coco]="sniper.data.coco.xǁCocoDatasetǁlabel_of__mutmut_* sniper.data.coco.xǁCocoDatasetǁcategory_of__mutmut_* sniper.data.coco.xǁCocoDatasetǁcategories_by_label__mutmut_* sniper.data.coco.x_categories_in_label_order__mutmut_* sniper.data.coco.x__parse_categories__mutmut_*"

# Surviving mutants reviewed as equivalent (cannot change behaviour); reasons in docs/results.md.
EQUIVALENT=$(cat <<'EOF'
sniper.chips.x_window_positions__mutmut_25
sniper.chips.x__assemble__mutmut_40
sniper.chips.x__cover_scale__mutmut_111
sniper.chips.x_negative_chips__mutmut_38
sniper.model.rpn.x_ignored_by__mutmut_5
sniper.model.rpn.xǁFp32AnchorGeneratorǁforward__mutmut_8
sniper.model.rpn.xǁFp32AnchorGeneratorǁforward__mutmut_9
sniper.model.rpn.xǁFp32AnchorGeneratorǁforward__mutmut_10
sniper.model.rpn.xǁFp32AnchorGeneratorǁforward__mutmut_11
sniper.model.rpn.xǁSniperRPNHeadǁ__init____mutmut_12
sniper.model.roi_heads.xǁStrictMatcherǁ__init____mutmut_7
sniper.model.roi_heads.xǁSniperRoIHeadsǁbox_loss__mutmut_7
sniper.model.roi_heads.xǁSniperRoIHeadsǁpostprocess_detections__mutmut_27
sniper.ops.softnms.x__check_inputs__mutmut_4
sniper.ops.softnms.x__with_sentinel__mutmut_11
sniper.ops.softnms.x__with_sentinel__mutmut_20
sniper.ops.softnms.x__with_sentinel__mutmut_26
sniper.ops.softnms.x__soft_nms_loop__mutmut_19
sniper.ops.softnms.x__soft_nms_loop__mutmut_37
sniper.ops.softnms.x__soft_nms_loop__mutmut_85
sniper.ops.softnms.x__soft_nms_loop__mutmut_88
sniper.ops.softnms.x__soft_nms_loop__mutmut_91
EOF
)

select_mutants() {  # module: generate the mutants, write the names to test to selected.txt
    MOD=$1 GLOBS="${GLOBS[$1]:-}" SAMPLE="$SAMPLE" JOBS="$JOBS" "$PY" -c '
import fnmatch, json, os
from pathlib import Path
import mutmut.__main__ as m  # noqa: F401  (sets the multiprocessing start method)
from mutmut.__main__ import create_mutants
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths, walk_mutatable_files
Path("mutants").mkdir(exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(int(os.environ["JOBS"]))
globs, k = os.environ["GLOBS"].split(), int(os.environ["SAMPLE"])
names = []
for path in walk_mutatable_files():
    meta = json.loads(Path("mutants", str(path) + ".meta").read_text())
    names += [n for n in meta["exit_code_by_key"] if not globs or any(fnmatch.fnmatch(n, g) for g in globs)]
picked = names[::k]  # every k-th, in file and function order (stratified over functions)
Path("selected.txt").write_text("".join(n + "\n" for n in picked))
Path("sample.txt").write_text(f"{k}\n")
print(f"{len(names)} mutants, testing {len(picked)} (every {k})")
'
}

summarise() {  # module: counts over selected.txt from `mutmut results --all`
    local mod=$1
    "$MUTMUT" results --all true 2>/dev/null | MOD=$mod SAMPLE="$SAMPLE" EQUIVALENT="$EQUIVALENT" "$PY" -c '
import os, sys
from collections import Counter
selected = set(open("selected.txt").read().split())
equiv = set(os.environ["EQUIVALENT"].split())
rows = []
for line in sys.stdin:
    name, sep, status = line.strip().rpartition(": ")
    if sep and name in selected:
        rows.append((name, status))
c = Counter(s for _, s in rows)
total = len(rows)
eq = [n for n, s in rows if s == "survived" and n in equiv]
k, sv, to, su, nt, nc = (c[x] for x in ("killed", "survived", "timeout", "suspicious", "no tests", "not checked"))
score = k / (total - len(eq)) if total > len(eq) else float("nan")
mod, sample = os.environ["MOD"], open("sample.txt").read().strip()
print(f"{mod:<10} tested {total:4d}  killed {k:4d}  survived {sv:4d}  timeout {to:3d}  suspicious {su:3d}"
      f"  no-tests {nt:3d}  not-checked {nc:3d}  equivalent {len(eq):3d}  score {score:.1%}  (sample 1/{sample})")
for n, s in rows:
    if s != "killed" and n not in equiv:
        print(f"    {s:<11} {n}")
'
}

SUMMARY=()
for mod in "${MODULES[@]}"; do
    [ -n "${FILES[$mod]:-}" ] || { echo "unknown module $mod (one of: ${ALL[*]})" >&2; exit 2; }
    dir=$WORK/$mod
    [ $KEEP -eq 1 ] || rm -rf "$dir"
    mkdir -p "$dir"
    ln -sfn "$ROOT/sniper" "$dir/sniper"
    ln -sfn "$ROOT/tests" "$dir/tests"
    only=$(printf '    %s\n' ${FILES[$mod]})
    sel=$(printf '    %s\n' ${TESTS[$mod]})
    cat >"$dir/setup.cfg" <<EOF
# generated by tools/mutation.sh
[mutmut]
source_paths = sniper
only_mutate =
$only
pytest_add_cli_args_test_selection =
$sel
pytest_add_cli_args =
    -p
    no:cacheprovider
process_isolation = forkserver
timeout_multiplier = 5.0
timeout_constant = 10.0

[tool:pytest]
markers = slow: end-to-end runs
timeout = $TEST_TIMEOUT
timeout_method = thread
EOF
    log=$dir/mutmut-run.log
    echo "== $mod: ${FILES[$mod]} against ${TESTS[$mod]} (log: ${log#"$ROOT"/})"
    start=$SECONDS
    if [ $REPORT -eq 1 ]; then
        [ -f "$dir/selected.txt" ] || { echo "$mod: no results in $dir" >&2; continue; }
        out=$(cd "$dir" && summarise "$mod")
        echo "$out"
        SUMMARY+=("$(head -n 1 <<<"$out")")
        continue
    fi
    todo=selected.txt
    if [ $RETRY -eq 1 ] && [ -f "$dir/selected.txt" ]; then
        (cd "$dir" && summarise "$mod" | awk 'NR > 1 {print $NF}' >retry.txt)
        todo=retry.txt
        echo "retrying $(wc -l <"$dir/retry.txt") mutants"
        [ -s "$dir/retry.txt" ] || { SUMMARY+=("$(cd "$dir" && summarise "$mod" | head -n 1)"); continue; }
    else
        (cd "$dir" && select_mutants "$mod") >"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
        tail -n 1 "$log"
    fi
    # named mutants are always (re)run; xargs: the list can be long
    (cd "$dir" && xargs -a "$todo" -d '\n' "$MUTMUT" run --max-children "$JOBS") >>"$log" 2>&1 || {
        echo "mutmut run failed for $mod; last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    }
    out=$(cd "$dir" && summarise "$mod")
    echo "$out"
    echo "   ($((SECONDS - start)) s)"
    SUMMARY+=("$(head -n 1 <<<"$out")")
done

echo
echo "== mutation score ($(date -u +%F), hypothesis profile $HYPOTHESIS_PROFILE)"
printf '%s\n' "${SUMMARY[@]}"
