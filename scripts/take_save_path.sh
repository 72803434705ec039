# Sourced by run_task.sh, best_cls.sh and best_new.sh as `source scripts/take_save_path.sh DEFAULT "$@"`: sets `save`
# to the value of --save_path in the arguments (else DEFAULT) and `user` to the other arguments, so the script names
# its run folders.
save=$1; shift
user=()
while [ $# -gt 0 ]; do
  # a --save_path without a value is passed on, for train.py to refuse
  if [ "$1" = "--save_path" ] && [ $# -gt 1 ]; then save=$2; shift 2; else user+=("$1"); shift; fi
done
