# Sourced by run_task.sh, best_cls.sh and best_new.sh as `source scripts/take_numbers.sh FLAG "$@"`: sets `numbers`
# to the integers that follow FLAG in the arguments (`--seeds 0 1 2`) and `rest` to the other arguments, in their
# order.
flag=$1; shift
numbers=()
rest=()
while [ $# -gt 0 ]; do
  if [ "$1" = "$flag" ]; then
    shift
    while [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; do numbers+=("$1"); shift; done
  else rest+=("$1"); shift; fi
done
