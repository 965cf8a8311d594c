#!/bin/bash
# Submit a batchgen job as SHARDS Slurm array tasks plus a merge that runs when all succeeded.
#   examples/slurm/submit.sh JOB.toml SHARDS OUT_DIR MERGED_DIR [extra sbatch options...]
# e.g. examples/slurm/submit.sh jobs/portraits.toml 8 /scratch/portraits /scratch/portraits-all --gres=gpu:1
# Prints the two Slurm job ids: the array's, then the merge's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
JOB=${1:?usage: submit.sh JOB.toml SHARDS OUT_DIR MERGED_DIR [sbatch options]}
SHARDS=${2:?}
OUT=${3:?}
MERGED=${4:?}
shift 4

array=$(sbatch --parsable --array=0-$((SHARDS - 1)) "$@" "$here/batchgen-shard.sbatch" "$JOB" "$OUT")
array=${array%%;*}  # --parsable prints "id" or "id;cluster"
merge=$(sbatch --parsable --dependency=afterok:"$array" "$here/batchgen-merge.sbatch" \
    "$OUT" "$SHARDS" "$MERGED")
echo "$array ${merge%%;*}"
