# test/unit/lib/json_checks.sh: sourced by the CLI checks that test JSON output
# (test/unit/cli_bench*.sh).  `fails` counts the failed checks; the caller
# ends with `json_checks_done NAME`.
fails=0

# check NAME PERL-EXPR JSON: the expression over the decoded line ($j) must hold
check() {
	if perl -MJSON::PP -e 'my $j = decode_json($ARGV[1]); exit(eval($ARGV[0]) ? 0 : 1)' "$2" "$3"; then
		echo "ok: $1"
	else
		echo "FAILED: $1: $3"; fails=$((fails + 1))
	fi
}

# json_checks_done NAME: exits 1 when any check failed
json_checks_done() {
	[ $fails -eq 0 ] || { echo "$1: $fails checks failed"; exit 1; }
	echo "$1: all passed"
}
