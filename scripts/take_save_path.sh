# Sourced by best_cls.sh and best_new.sh as `source scripts/take_save_path.sh DEFAULT "$@"`: sets `save` to the value
# of --save_path in the arguments (else DEFAULT) and `user` to the other arguments, so the script names its run folders.
save=$1; shift
user=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--save_path" ]; then save=$2; shift 2; else user+=("$1"); shift; fi
done
