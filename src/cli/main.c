/*
 * main.c: the bin/gptoss command line (the CLI contract, see README.md).
 *
 *   gptoss tokenize --model DIR [--jsonl]
 *   gptoss logits   --model DIR --tokens 1,2,3 [--top K] [--device D]
 *   gptoss generate --model DIR --prompt TEXT [sampling options] [--raw] [--json]
 *                   [--json-schema FILE] [--max-reasoning-tokens N]
 *   gptoss bench    --model DIR [--batch 1,8,64] [--prompt-len N] [--gen N] [--json-schema FILE]
 *   gptoss bench    --model DIR --requests N [--input-len N] [--output-len N] [--lengths fixed|lognormal]
 *   gptoss bench    --model DIR --arrivals K [--running M] [--arrival-len N] [--arrive-every S]
 *   gptoss synth    --preset tiny|tiny-odd|tiny-moe|20b|120b --out DIR [--seed N] [--tokenizer FILE]
 *
 * Every command parses its options against one table (name, kind, the
 * commands that accept it, numeric range), so a misspelt option, a bad number
 * or a missing argument is a one-line error on stderr with exit status 1.
 * The generation options of generate come from the engine's parameter table
 * (params.h) and go through its setters: the same names, ranges, caps and
 * messages as SQL's params.
 * Results go to stdout; progress (model loading, synthesis) to stderr when it
 * is a terminal or with --verbose.  The commands only drive the engine's
 * public interfaces: tokenize needs nothing but tokenizer.json, logits runs
 * one prefill step on a backend, generate and bench go through the engine.
 */
#include "bench_serve.h"
#include "serve_lengths.h"
#include "engine.h"
#include "harmony.h"
#include "synth.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum
{
	CMD_TOKENIZE = 1 << 0,
	CMD_LOGITS = 1 << 1,
	CMD_GENERATE = 1 << 2,
	CMD_BENCH = 1 << 3,
	CMD_SYNTH = 1 << 4,
	CMD_COMPUTE = CMD_LOGITS | CMD_GENERATE | CMD_BENCH,
	CMD_MODEL = CMD_TOKENIZE | CMD_COMPUTE
};

/* Every option of every command; a command only reads those it accepts. */
typedef struct cli_opts
{
	const char *model;
	const char *device;
	const char *tokens;			/* logits: "1,2,3" */
	const char *prompt;
	const char *batch;			/* bench: "1,8,64" */
	const char *lengths;		/* bench --requests: "fixed" or "lognormal" */
	const char *preset;
	const char *out;
	const char *tokenizer;
	const char *json_schema;	/* generate, bench: file with a JSON Schema for the output */
	long		top;
	long		prompt_len;
	long		gen;
	long		requests;
	long		input_len;
	long		output_len;
	long		max_context;
	long		max_seqs;
	long		prefill_chunk;
	long		max_step_tokens;
	long		arrivals;		/* bench --arrivals: long prompts arriving while others decode */
	long		running;
	long		arrival_len;
	long		arrive_every;
	long		threads;
	uint64_t	seed;			/* bench, synth */
	bool		jsonl;
	bool		json;
	bool		verbose;
	gptoss_gen_params params;	/* generate: the parameter table's options */
} cli_opts;

typedef enum opt_kind
{
	OPT_FLAG,
	OPT_STRING,
	OPT_INT,
	OPT_U64
} opt_kind;

typedef struct opt_spec
{
	const char *name;
	opt_kind	kind;
	int			commands;		/* CMD_* mask of commands accepting it */
	size_t		offset;			/* field in cli_opts */
	long		min;			/* OPT_INT range */
	long		max;
} opt_spec;

#define OPT(name, kind, cmds, field, lo, hi) {name, kind, cmds, offsetof(cli_opts, field), lo, hi}

static const opt_spec OPTIONS[] = {
	OPT("model", OPT_STRING, CMD_MODEL, model, 0, 0),
	OPT("device", OPT_STRING, CMD_COMPUTE, device, 0, 0),
	OPT("threads", OPT_INT, CMD_COMPUTE, threads, 0, 1024),
	OPT("max-context", OPT_INT, CMD_GENERATE | CMD_BENCH, max_context, 2, INT_MAX),
	OPT("prefill-chunk", OPT_INT, CMD_GENERATE | CMD_BENCH, prefill_chunk, 1, INT_MAX),
	OPT("max-step-tokens", OPT_INT, CMD_GENERATE | CMD_BENCH, max_step_tokens, 1, INT_MAX),
	OPT("verbose", OPT_FLAG, CMD_MODEL | CMD_SYNTH, verbose, 0, 0),
	OPT("jsonl", OPT_FLAG, CMD_TOKENIZE, jsonl, 0, 0),
	OPT("tokens", OPT_STRING, CMD_LOGITS, tokens, 0, 0),
	OPT("top", OPT_INT, CMD_LOGITS, top, 0, INT_MAX),
	OPT("prompt", OPT_STRING, CMD_GENERATE, prompt, 0, 0),
	OPT("seed", OPT_U64, CMD_BENCH | CMD_SYNTH, seed, 0, 0),
	OPT("json-schema", OPT_STRING, CMD_GENERATE | CMD_BENCH, json_schema, 0, 0),
	OPT("json", OPT_FLAG, CMD_GENERATE, json, 0, 0),
	OPT("batch", OPT_STRING, CMD_BENCH, batch, 0, 0),
	OPT("prompt-len", OPT_INT, CMD_BENCH, prompt_len, 1, INT_MAX),
	OPT("gen", OPT_INT, CMD_BENCH, gen, 1, INT_MAX),
	OPT("requests", OPT_INT, CMD_BENCH, requests, 1, 1000000),
	OPT("input-len", OPT_INT, CMD_BENCH, input_len, 1, INT_MAX / 2),
	OPT("output-len", OPT_INT, CMD_BENCH, output_len, 1, INT_MAX / 2),
	OPT("lengths", OPT_STRING, CMD_BENCH, lengths, 0, 0),
	OPT("max-seqs", OPT_INT, CMD_GENERATE | CMD_BENCH, max_seqs, 1, 4096),
	OPT("arrivals", OPT_INT, CMD_BENCH, arrivals, 1, 10000),
	OPT("running", OPT_INT, CMD_BENCH, running, 1, 4096),
	OPT("arrival-len", OPT_INT, CMD_BENCH, arrival_len, 1, 1000000),
	OPT("arrive-every", OPT_INT, CMD_BENCH, arrive_every, 1, 10000),
	OPT("preset", OPT_STRING, CMD_SYNTH, preset, 0, 0),
	OPT("out", OPT_STRING, CMD_SYNTH, out, 0, 0),
	OPT("tokenizer", OPT_STRING, CMD_SYNTH, tokenizer, 0, 0),
};

#define N_OPTIONS ((int) (sizeof(OPTIONS) / sizeof(OPTIONS[0])))

static const char USAGE_FORMAT[] =
	"usage: gptoss COMMAND [OPTIONS]\n"
	"\n"
	"commands:\n"
	"  tokenize --model DIR [--jsonl]\n"
	"      stdin (byte for byte) -> JSON array of token ids; --jsonl: one JSON string per line\n"
	"  logits --model DIR --tokens 1,2,3 [--top K] [--device auto|cpu|cuda]\n"
	"      one prefill step: {\"argmax\": [...], \"top\": [[id, logit], ...], \"logsumexp\": x}\n"
	"  generate --model DIR --prompt TEXT [--json] [--json-schema FILE] [--device D]\n"
	"           [--max-context N] %s"
	"      prints the final channel text (--raw: the plain continuation); --json-schema: the\n"
	"      text is a JSON document valid for the schema in FILE (structured output)\n"
	"  bench --model DIR [--batch 1,8,64] [--prompt-len N] [--gen N] [--device D]\n"
	"        [--prefill-chunk N] [--max-step-tokens N] [--seed S] [--json-schema FILE]\n"
	"      one JSON line per batch size (random prompts, greedy, ignore eos; a prompt\n"
	"      is prefilled in one chunk of up to 2048 tokens unless --prefill-chunk is given)\n"
	"  bench --model DIR --requests N [--input-len N] [--output-len N] [--lengths fixed|lognormal]\n"
	"        [--max-seqs N] [--prefill-chunk N] [--max-step-tokens N] [--seed S] [--device D]\n"
	"      serving run: N requests submitted at once (random prompts, greedy, ignore eos),\n"
	"      one JSON line: total and output tok/s, TTFT and inter-token latency (mean, p50,\n"
	"      p99), mean batch; lognormal: sigma 1, clipped to [4, 2048], means --input-len and\n"
	"      --output-len, seed 42 unless --seed (defaults: 128 + 128 tokens, --max-seqs\n"
	"      min(N, 1024), --prefill-chunk 2048, --max-step-tokens max-seqs + prefill-chunk)\n"
	"  bench --model DIR --arrivals K [--running M] [--prompt-len N] [--arrival-len N]\n"
	"        [--arrive-every S] [--prefill-chunk N] [--max-step-tokens N] [--seed S] [--device D]\n"
	"      inter-token latency while long prompts arrive: M sequences decode (N-token prompts)\n"
	"      and before every S-th step a random --arrival-len-token prompt arrives (K in all,\n"
	"      one token each); one JSON line: the running sequences' inter-token latency (mean,\n"
	"      p50, p99, max), step times with and without prompt tokens, the arrivals' TTFT\n"
	"      (defaults: M 64, N 128, 2048-token arrivals every 16 steps, the engine's chunked\n"
	"      prefill: --prefill-chunk 256, --max-step-tokens 2048; --prefill-chunk 2048 takes\n"
	"      each arrival in one step)\n"
	"  synth --preset tiny|tiny-odd|tiny-moe|20b|120b --out DIR [--seed N] [--tokenizer FILE]\n"
	"      writes a deterministic random-weight checkpoint\n"
	"\n"
	"common: --threads N (CPU), --verbose (progress on stderr), --help\n"
	"defaults: --device auto (cuda when built with it and a GPU is present), --max-context\n"
	"          min(4096, max_position_embeddings), --max-tokens 256, --temperature 1, --top-p 1\n";

/* Prints the usage, with generate's options taken from the parameter table. */
static void
print_usage(FILE *out)
{
	char		opts[2048] = "";
	size_t		at = 0;
	size_t		line = 29;	/* after "           [--max-context N] " */

	for (int i = 0; i < GPTOSS_N_PARAMS && at < sizeof(opts); i++)
	{
		const gptoss_param *param = &GPTOSS_PARAMS[i];
		char		name[64];
		char		item[160];
		const char *value = "";
		char		names[96] = "";

		if (param->sql_only)
			continue;
		snprintf(name, sizeof(name), "%s", param->cli_name ? param->cli_name : param->name);
		for (char *c = name; *c; c++)
			if (*c == '_')
				*c = '-';
		switch (param->type)
		{
			case GPTOSS_PARAM_INT:
				value = " N";
				break;
			case GPTOSS_PARAM_FLOAT:
				value = " X";
				break;
			case GPTOSS_PARAM_SEED:
				value = " S";
				break;
			case GPTOSS_PARAM_BOOL:
				break;
			case GPTOSS_PARAM_ENUM:
				names[0] = ' ';
				for (int k = 0; param->names[k] != NULL; k++)
					snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
							 k ? "|" : "", param->names[k]);
				value = names;
				break;
			case GPTOSS_PARAM_STRING:
				value = " TEXT";
				break;
			case GPTOSS_PARAM_STRINGS:
				value = " STR";
				break;
			case GPTOSS_PARAM_JSON:
				value = " JSON";
				break;
		}
		snprintf(item, sizeof(item), "[--%s%s]%s", name, value,
				 param->type == GPTOSS_PARAM_STRINGS ? "..." : "");
		if (line + strlen(item) + 1 > 90)
		{
			at += (size_t) snprintf(opts + at, sizeof(opts) - at, "\n           ");
			line = 11;
		}
		else if (i > 0)
		{
			at += (size_t) snprintf(opts + at, sizeof(opts) - at, " ");
			line++;
		}
		at += (size_t) snprintf(opts + at, sizeof(opts) - at, "%s", item);
		line += strlen(item);
	}
	if (at < sizeof(opts) - 1)
		opts[at++] = '\n', opts[at] = '\0';
	fprintf(out, USAGE_FORMAT, opts);
}

/* Prints an error line and returns the exit status 1. */
static int
fail(const char *fmt,...)
__attribute__((format(printf, 1, 2)));

static int
fail(const char *fmt,...)
{
	va_list		ap;

	fputs("gptoss: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

/* ---------------------------------------------------------------------------
 * Option parsing
 */

/* Strict base-10 integer in [min, max]. */
static int
parse_long(const char *s, long min, long max, long *out)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (s[0] == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* Strict 64-bit integer, as an unsigned seed. */
static int
parse_u64(const char *s, uint64_t *out)
{
	char	   *end;

	/* A negative value wraps as in SQL's seed (int64 taken as uint64). */
	if (!(s[0] >= '0' && s[0] <= '9') && !(s[0] == '-' && s[1] >= '0' && s[1] <= '9'))
		return -1;
	errno = 0;
	if (s[0] == '-')
		*out = (uint64_t) strtoll(s, &end, 10);
	else
		*out = (uint64_t) strtoull(s, &end, 10);
	if (*end != '\0' || errno != 0)
		return -1;
	return 0;
}

/* Stores one option's value; returns 0 or the exit status 1 after an error line. */
static int
set_option(cli_opts *o, const opt_spec *spec, const char *value)
{
	void	   *field = (char *) o + spec->offset;

	switch (spec->kind)
	{
		case OPT_FLAG:
			*(bool *) field = true;
			return 0;
		case OPT_STRING:
			*(const char **) field = value;
			return 0;
		case OPT_INT:
			if (parse_long(value, spec->min, spec->max, (long *) field) < 0)
				return fail("--%s: expected an integer in [%ld, %ld], got \"%s\"", spec->name,
							spec->min, spec->max, value);
			return 0;
		case OPT_U64:
			if (parse_u64(value, (uint64_t *) field) < 0)
				return fail("--%s: expected a 64-bit integer, got \"%s\"", spec->name, value);
			return 0;
	}
	return 0;
}

/*
 * Applies a generation option of the parameter table (--max-tokens, --stop,
 * ...; flags for BOOL rows, a value otherwise) to o->params.  Returns -1 when
 * arg names no row, 0 when applied, 1 after an error line.
 */
static int
set_gen_param(cli_opts *o, int argc, char **argv, int *i, const char *arg, size_t name_len,
			  const char *eq)
{
	char		name[64];
	const gptoss_param *param;
	const char *value;
	gptoss_error err = {0};
	int			rc;

	if (name_len >= sizeof(name))
		return -1;
	memcpy(name, arg, name_len);
	name[name_len] = '\0';
	param = gptoss_param_find_cli(name);
	if (param == NULL)
		return -1;
	if (param->type == GPTOSS_PARAM_BOOL)
	{
		if (eq)
			return fail("--%s takes no value", name);
		rc = gptoss_param_set_bool(&o->params, param, true, &err);
	}
	else
	{
		if (eq)
			value = eq + 1;
		else if (*i + 1 < argc)
			value = argv[++*i];
		else
			return fail("--%s: missing value", name);
		if (param->type == GPTOSS_PARAM_INT || param->type == GPTOSS_PARAM_FLOAT ||
			param->type == GPTOSS_PARAM_SEED)
			rc = gptoss_param_set_number(&o->params, param, value, &err);
		else if (param->type == GPTOSS_PARAM_JSON)
			rc = gptoss_param_set_json(&o->params, param, value, strlen(value), &err);
		else
			rc = gptoss_param_set_string(&o->params, param, value, strlen(value), &err);
	}
	if (rc < 0)
		return fail("--%s: %s", name, err.msg);
	return 0;
}

/*
 * Parses argv[first..] for command cmd ("--name value" or "--name=value");
 * given[i] records which OPTIONS[i] appeared.  Returns 0, 1 (error) or 2 (--help).
 */
static int
parse_options(int argc, char **argv, int first, int cmd, const char *cmd_name,
			  cli_opts *o, bool *given)
{
	for (int i = first; i < argc; i++)
	{
		const char *arg = argv[i];
		const char *eq;
		const char *value = NULL;
		size_t		name_len;
		const opt_spec *spec = NULL;
		int			k;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
			return 2;
		if (strncmp(arg, "--", 2) != 0)
			return fail("%s: unexpected argument \"%s\" (options start with --)", cmd_name, arg);
		arg += 2;
		eq = strchr(arg, '=');
		name_len = eq ? (size_t) (eq - arg) : strlen(arg);
		if (cmd == CMD_GENERATE)
		{
			int			rc = set_gen_param(o, argc, argv, &i, arg, name_len, eq);

			if (rc >= 0)
			{
				if (rc > 0)
					return 1;
				continue;
			}
		}
		for (k = 0; k < N_OPTIONS; k++)
			if (strlen(OPTIONS[k].name) == name_len && strncmp(OPTIONS[k].name, arg, name_len) == 0)
				break;
		if (k < N_OPTIONS && (OPTIONS[k].commands & cmd))
			spec = &OPTIONS[k];
		if (spec == NULL)
			return fail("%s: unknown option --%.*s (see gptoss --help)", cmd_name, (int) name_len, arg);
		if (spec->kind == OPT_FLAG)
		{
			if (eq)
				return fail("--%s takes no value", spec->name);
		}
		else if (eq)
			value = eq + 1;
		else if (i + 1 < argc)
			value = argv[++i];
		else
			return fail("--%s: missing value", spec->name);
		if (set_option(o, spec, value) != 0)
			return 1;
		given[k] = true;
	}
	return 0;
}

/* Whether option name appeared. */
static bool
was_given(const bool *given, const char *name)
{
	for (int k = 0; k < N_OPTIONS; k++)
		if (strcmp(OPTIONS[k].name, name) == 0)
			return given[k];
	return false;
}

/* Checks --device. */
static int
check_device(const char *device)
{
	if (strcmp(device, "auto") != 0 && strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0)
		return fail("--device: expected auto, cpu or cuda, got \"%s\"", device);
	return 0;
}

/* ---------------------------------------------------------------------------
 * Progress
 */

typedef struct progress_state
{
	bool		enabled;
	bool		tty;			/* redraw one line; else a line per 10% step */
	int			last_percent;
	char		last_what[64];
} progress_state;

/* Prints "what NN%" on stderr when the phase changes or the percentage moves on. */
static void
show_progress(void *arg, double fraction, const char *what)
{
	progress_state *ps = arg;
	int			percent = (int) (fraction * 100.0 + 0.5);
	size_t		phase_len;
	bool		same_phase;

	if (!ps->enabled)
		return;
	if (what == NULL)
		what = "working";
	/* The phase is the text before any count ("writing tensors: 8/74 MiB"). */
	phase_len = strcspn(what, ":0123456789");
	if (phase_len >= sizeof(ps->last_what))
		phase_len = sizeof(ps->last_what) - 1;
	same_phase = strlen(ps->last_what) == phase_len && strncmp(what, ps->last_what, phase_len) == 0;
	if (same_phase && (ps->tty ? percent == ps->last_percent : percent / 10 == ps->last_percent / 10))
		return;
	ps->last_percent = percent;
	snprintf(ps->last_what, sizeof(ps->last_what), "%.*s", (int) phase_len, what);
	if (ps->tty)
		fprintf(stderr, "\r%-48.48s %3d%%%s", what, percent, percent >= 100 ? "\n" : "");
	else
		fprintf(stderr, "%s %d%%\n", what, percent);
	fflush(stderr);
}

/* Progress goes to stderr when it is a terminal or with --verbose. */
static void
progress_init(progress_state *ps, bool verbose)
{
	ps->tty = isatty(STDERR_FILENO);
	ps->enabled = verbose || ps->tty;
	ps->last_percent = -1;
	ps->last_what[0] = '\0';
}

/* Ends a redrawn progress line that did not reach 100%. */
static void
progress_done(progress_state *ps)
{
	if (ps->enabled && ps->tty && ps->last_percent >= 0 && ps->last_percent < 100)
		fputc('\n', stderr);
	ps->last_percent = -1;
}

/* ---------------------------------------------------------------------------
 * tokenize
 */

/* Reads all of a stream into a malloc'ed buffer. */
static char *
read_all(FILE *f, size_t *len)
{
	size_t		cap = 65536,
				n = 0,
				got;
	char	   *buf = malloc(cap);

	if (buf == NULL)
		return NULL;
	while ((got = fread(buf + n, 1, cap - n, f)) > 0)
	{
		n += got;
		if (n == cap)
		{
			char	   *grown = realloc(buf, cap * 2);

			if (grown == NULL)
			{
				free(buf);
				return NULL;
			}
			buf = grown;
			cap *= 2;
		}
	}
	if (ferror(f))
	{
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/* Prints ids as a compact JSON array and a newline. */
static void
print_ids(const int32_t *ids, int n)
{
	putchar('[');
	for (int i = 0; i < n; i++)
		printf(i ? ",%d" : "%d", ids[i]);
	fputs("]\n", stdout);
}

/* Loads DIR/tokenizer.json. */
static gptoss_tokenizer *
load_tokenizer(const char *dir, gptoss_error *err)
{
	char		path[4096];

	if ((size_t) snprintf(path, sizeof(path), "%s/tokenizer.json", dir) >= sizeof(path))
	{
		gptoss_errorf(err, "model path too long");
		return NULL;
	}
	return gptoss_tokenizer_load(path, err);
}

/* Encodes len bytes and prints the ids; returns 0 or 1. */
static int
encode_and_print(const gptoss_tokenizer *tok, const char *text, size_t len)
{
	gptoss_error err = {0};
	int32_t    *ids = NULL;
	int			n = gptoss_tokenizer_encode(tok, text, len, &ids, &err);

	if (n < 0)
		return fail("tokenize: %s", err.msg);
	print_ids(ids, n);
	free(ids);
	return 0;
}

static int
cmd_tokenize(const cli_opts *o)
{
	gptoss_error err = {0};
	gptoss_tokenizer *tok;
	char	   *input;
	size_t		len = 0;
	int			rc = 0;

	tok = load_tokenizer(o->model, &err);
	if (tok == NULL)
		return fail("tokenize: %s", err.msg);
	input = read_all(stdin, &len);
	if (input == NULL)
	{
		gptoss_tokenizer_free(tok);
		return fail("tokenize: cannot read stdin");
	}
	if (!o->jsonl)
		rc = encode_and_print(tok, input, len);
	else
	{
		size_t		start = 0;
		int			line = 0;

		while (start < len && rc == 0)
		{
			const char *nl = memchr(input + start, '\n', len - start);
			size_t		end = nl ? (size_t) (nl - input) : len;
			json_error_t jerr;
			json_t	   *value;

			line++;
			value = json_loadb(input + start, end - start, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
			if (value == NULL || !json_is_string(value))
				rc = fail("tokenize --jsonl: line %d is not a JSON string%s%s", line,
						  value ? "" : ": ", value ? "" : jerr.text);
			else
				rc = encode_and_print(tok, json_string_value(value), json_string_length(value));
			json_decref(value);
			start = end + 1;
		}
	}
	free(input);
	gptoss_tokenizer_free(tok);
	return rc;
}

/* ---------------------------------------------------------------------------
 * logits
 */

/* Parses "1,2,3" (each in [min, max]) into a malloc'ed array; returns the count or -1. */
static int
parse_id_list(const char *s, const char *what, long min, long max, int32_t **out)
{
	int			n = 1,
				k = 0;
	int32_t    *ids;
	const char *p = s;

	for (const char *c = s; *c; c++)
		n += *c == ',';
	ids = malloc((size_t) n * sizeof(int32_t));
	if (ids == NULL)
		return -1;
	while (k < n)
	{
		const char *comma = strchr(p, ',');
		size_t		len = comma ? (size_t) (comma - p) : strlen(p);
		char		item[32];
		long		v;

		if (len == 0 || len >= sizeof(item))
			break;
		memcpy(item, p, len);
		item[len] = '\0';
		if (parse_long(item, min, max, &v) < 0)
			break;
		ids[k++] = (int32_t) v;
		p += len + (comma ? 1 : 0);
	}
	if (k < n)
	{
		fail("%s: expected comma-separated integers in [%ld, %ld], got \"%s\"", what, min, max, s);
		free(ids);
		return -1;
	}
	*out = ids;
	return n;
}

typedef struct ranked
{
	int32_t		id;
	float		logit;
} ranked;

/* Highest logit first, lower id first on ties. */
static int
ranked_cmp(const void *a, const void *b)
{
	const ranked *x = a,
			   *y = b;

	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Loads the checkpoint and a one-slot backend for n tokens. */
static int
load_model_backend(const cli_opts *o, int context, progress_state *ps, gptoss_model **model,
				   gptoss_backend **be)
{
	gptoss_error err = {0};
	gptoss_backend_opts bopts;

	if (gptoss_model_load(o->model, model, show_progress, ps, &err) < 0)
	{
		progress_done(ps);
		return fail("%s", err.msg);
	}
	progress_done(ps);
	memset(&bopts, 0, sizeof(bopts));
	bopts.max_seqs = 1;
	bopts.max_context = context;
	bopts.threads = (int) o->threads;
	bopts.gpu_memory_fraction = 0.9;
	*be = gptoss_backend_create(o->device, *model, &bopts, show_progress, ps, &err);
	progress_done(ps);
	if (*be == NULL)
	{
		gptoss_model_free(*model);
		return fail("%s", err.msg);
	}
	return 0;
}

static int
cmd_logits(const cli_opts *o)
{
	gptoss_config cfg;
	gptoss_error err = {0};
	gptoss_model *model = NULL;
	gptoss_backend *be = NULL;
	progress_state ps;
	int32_t    *ids = NULL;
	int			n,
				vocab,
				top;
	float	   *logits;
	ranked	   *order;
	double		maxv,
				sum = 0;
	const float *last;
	gptoss_step_seq seq;
	int32_t		next = -1;

	if (o->tokens == NULL)
		return fail("logits: --tokens is required");
	if (gptoss_config_load(o->model, &cfg, &err) < 0)
		return fail("logits: %s", err.msg);
	vocab = cfg.vocab_size;
	n = parse_id_list(o->tokens, "--tokens", 0, vocab - 1, &ids);
	if (n < 0)
		return 1;
	if (cfg.max_position_embeddings > 0 && n > cfg.max_position_embeddings)
	{
		free(ids);
		return fail("logits: %d tokens exceed the model's %d positions", n,
					cfg.max_position_embeddings);
	}
	top = o->top > vocab ? vocab : (int) o->top;
	logits = malloc((size_t) n * (size_t) vocab * sizeof(float));
	order = malloc((size_t) vocab * sizeof(ranked));
	if (logits == NULL || order == NULL)
	{
		free(ids);
		free(logits);
		free(order);
		return fail("logits: out of memory for %d x %d logits", n, vocab);
	}
	progress_init(&ps, o->verbose);
	if (load_model_backend(o, n < 2 ? 2 : n, &ps, &model, &be) != 0)
	{
		free(ids);
		free(logits);
		free(order);
		return 1;
	}
	memset(&seq, 0, sizeof(seq));
	seq.slot = 0;
	seq.pos = 0;
	seq.n_tokens = n;
	seq.tokens = ids;
	seq.sample = 0;
	if (be->step(be, &seq, 1, &next, logits, &err) < 0)
	{
		be->free(be);
		gptoss_model_free(model);
		free(ids);
		free(logits);
		free(order);
		return fail("logits: %s", err.msg);
	}

	/* {"argmax": [...], "top": [[id, logit], ...], "logsumexp": x} */
	fputs("{\"argmax\":[", stdout);
	for (int t = 0; t < n; t++)
		printf(t ? ",%d" : "%d", gptoss_argmax(logits + (size_t) t * vocab, vocab));
	last = logits + (size_t) (n - 1) * vocab;
	maxv = last[0];
	for (int v = 0; v < vocab; v++)
	{
		order[v].id = v;
		order[v].logit = last[v];
		if (last[v] > maxv)
			maxv = last[v];
	}
	for (int v = 0; v < vocab; v++)
		sum += exp((double) last[v] - maxv);
	qsort(order, (size_t) vocab, sizeof(ranked), ranked_cmp);
	fputs("],\"top\":[", stdout);
	for (int k = 0; k < top; k++)
		printf("%s[%d,%.9g]", k ? "," : "", order[k].id, (double) order[k].logit);
	if (isfinite(maxv) && isfinite(sum))
		printf("],\"logsumexp\":%.17g}\n", maxv + log(sum));
	else
		fputs("],\"logsumexp\":null}\n", stdout);

	be->free(be);
	gptoss_model_free(model);
	free(ids);
	free(logits);
	free(order);
	return 0;
}

/* ---------------------------------------------------------------------------
 * generate and bench: through the engine
 */

/* Creates the engine for the command's options (prefill_chunk 0: the engine's default). */
static gptoss_engine *
create_engine(const cli_opts *o, int max_seqs, int max_context, int prefill_chunk,
			  progress_state *ps)
{
	gptoss_engine_opts eopts;
	gptoss_error err = {0};
	gptoss_engine *eng;

	memset(&eopts, 0, sizeof(eopts));
	eopts.model_path = o->model;
	eopts.device = o->device;
	eopts.backend.max_seqs = max_seqs;
	eopts.backend.max_context = max_context;
	eopts.backend.threads = (int) o->threads;
	eopts.backend.gpu_memory_fraction = 0.9;
	eopts.backend.cuda_graphs = 1;	/* as the worker does by default */
	eopts.prefill_chunk = prefill_chunk;
	eopts.max_step_tokens = (int) o->max_step_tokens;
	eng = gptoss_engine_create(&eopts, show_progress, ps, &err);
	progress_done(ps);
	if (eng == NULL)
		fail("%s", err.msg);
	return eng;
}

/*
 * Says on stderr why generate printed an empty answer: the model wrote no
 * harmony final message, which a random-weight checkpoint never does.
 */
static void
explain_no_answer(const gptoss_config *cfg, const gptoss_result *res)
{
	fprintf(stderr, "gptoss: generate: no final answer: the model wrote no harmony \"final\" message "
			"in %d tokens (finish_reason %s)\n",
			res->completion_tokens, gptoss_finish_reason_name(res->finish_reason));
	if (cfg->random_weights)
		fputs("gptoss: this checkpoint has random weights (gptoss synth), so it never writes one; "
			  "--raw prints the plain continuation\n", stderr);
	else if (res->finish_reason == GPTOSS_FINISH_LENGTH)
		fputs("gptoss: it ran out of tokens while reasoning; raise --max-tokens, or see the "
			  "reasoning with --include-reasoning\n", stderr);
}

/* Adds a string member to obj (jansson needs valid UTF-8, which engine text always is). */
static void
json_set_text(json_t *obj, const char *key, const char *text, size_t len)
{
	json_object_set_new(obj, key, json_stringn(text, len));
}

/*
 * The response_format object for --json-schema FILE (the file holds a bare
 * JSON Schema); malloc'ed, or NULL after printing the error.
 */
static char *
response_format_from_file(const char *path)
{
	json_error_t jerr;
	json_t	   *schema = json_load_file(path, JSON_DECODE_ANY, &jerr);
	json_t	   *rf;
	char	   *text;

	if (schema == NULL)
	{
		fail("--json-schema: %s: %s", path, jerr.text);
		return NULL;
	}
	rf = json_pack("{s:s, s:{s:s, s:o, s:b}}", "type", "json_schema", "json_schema", "name", "output",
				   "schema", schema, "strict", 1);
	text = rf ? json_dumps(rf, JSON_COMPACT) : NULL;
	json_decref(rf);
	if (text == NULL)
		fail("--json-schema: out of memory");
	return text;
}

static int
cmd_generate(const cli_opts *o)
{
	gptoss_gen_params p;
	gptoss_error err = {0};
	gptoss_engine *eng;
	progress_state ps;
	gptoss_result res;
	int32_t    *ids = NULL;
	int			n_ids = 0;
	int64_t		id = -1;
	int			rc = 0;
	char	   *rf = NULL;

	if (o->prompt == NULL)
		return fail("generate: --prompt is required");
	p = o->params;
	p.include_reasoning = p.include_reasoning || o->json;
	if (o->json_schema && (rf = response_format_from_file(o->json_schema)) == NULL)
		return 1;
	p.response_format = rf;

	progress_init(&ps, o->verbose);
	eng = create_engine(o, o->max_seqs > 0 ? (int) o->max_seqs : 1, (int) o->max_context,
						(int) o->prefill_chunk, &ps);
	if (eng == NULL)
	{
		free(rf);
		return 1;
	}
	if (gptoss_render_prompt(gptoss_engine_tokenizer(eng), o->prompt, NULL, 0, &p, NULL,
							 &ids, &n_ids, &err) < 0 ||
		(id = gptoss_engine_submit(eng, ids, n_ids, &p, &err)) < 0)
	{
		free(ids);
		free(rf);
		gptoss_engine_free(eng);
		return fail("generate: %s", err.msg);
	}
	free(ids);
	free(rf);
	while (gptoss_engine_active(eng) > 0)
		if (gptoss_engine_step(eng, &err) < 0)
			break;
	gptoss_engine_result(eng, id, &res);
	if (res.finish_reason != GPTOSS_FINISH_ERROR && !p.raw && res.text_len == 0)
		explain_no_answer(&gptoss_engine_model(eng)->config, &res);
	if (res.finish_reason == GPTOSS_FINISH_ERROR)
		rc = fail("generate: %s", res.error);
	else if (o->json)
	{
		json_t	   *obj = json_object(),
				   *tokens = json_array(),
				   *usage = json_object();
		char	   *dump;

		json_set_text(obj, "text", res.text, res.text_len);
		json_set_text(obj, "reasoning", res.reasoning, res.reasoning_len);
		for (int i = 0; i < res.n_tokens; i++)
			json_array_append_new(tokens, json_integer(res.tokens[i]));
		json_object_set_new(obj, "tokens", tokens);
		json_object_set_new(obj, "finish_reason",
							json_string(gptoss_finish_reason_name(res.finish_reason)));
		json_object_set_new(usage, "prompt_tokens", json_integer(res.prompt_tokens));
		json_object_set_new(usage, "completion_tokens", json_integer(res.completion_tokens));
		json_object_set_new(usage, "total_tokens",
							json_integer(res.prompt_tokens + res.completion_tokens));
		json_object_set_new(obj, "usage", usage);
		if (res.logprobs != NULL)
		{
			/* one entry per generated token: its log-probability and the alternatives asked for */
			json_t	   *lps = json_array();

			for (int i = 0; i < res.n_tokens; i++)
			{
				json_t	   *e = json_object(),
						   *top = json_array();

				json_object_set_new(e, "id", json_integer(res.tokens[i]));
				json_object_set_new(e, "logprob", json_real(res.logprobs[i].logprob));
				for (int k = 0; k < res.logprobs[i].n_top; k++)
					json_array_append_new(top, json_pack("[i,f]", (int) res.logprobs[i].top_ids[k],
														 (double) res.logprobs[i].top_logprobs[k]));
				json_object_set_new(e, "top", top);
				json_array_append_new(lps, e);
			}
			json_object_set_new(obj, "logprobs", lps);
		}
		dump = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (dump == NULL)
			rc = fail("generate: cannot format the JSON result");
		else
			printf("%s\n", dump);
		free(dump);
		json_decref(obj);
	}
	else
	{
		fwrite(res.text, 1, res.text_len, stdout);
		fputc('\n', stdout);
	}
	gptoss_engine_free(eng);
	return rc;
}

/* Parses "1,8,64" into batch sizes (each in [1, 4096]); returns the count or -1. */
static int
parse_batches(const char *s, int32_t **out)
{
	return parse_id_list(s, "--batch", 1, 4096, out);
}

/*
 * One timed run of batch requests; prints its JSON line.  Returns 0 or 1.
 * With a response_format (rf) every request is constrained from its first
 * token (raw mode, stopping when its document is done), and the line adds
 * the decode rate over the steps where the whole batch was still decoding
 * (the figure to compare with an unconstrained run) and the mask time.
 */
static int
bench_batch(gptoss_engine *eng, int batch, int prompt_len, int gen, uint64_t seed, const char *rf)
{
	gptoss_gen_params p;
	gptoss_error err = {0};
	int64_t    *ids = calloc((size_t) batch, sizeof(int64_t));
	double	   *first = calloc((size_t) batch, sizeof(double));
	int32_t    *prompt = malloc((size_t) prompt_len * sizeof(int32_t));
	double		t_submit,
				t_prefilled = 0,
				t_end,
				ttft_sum = 0;
	int			n_first = 0,
				rc = 0;
	gptoss_backend_info info;
	gptoss_backend *be = gptoss_engine_backend(eng);

	if (!ids || !first || !prompt)
	{
		free(ids);
		free(first);
		free(prompt);
		return fail("bench: out of memory");
	}
	double		full_s = 0,
				full_tokens = 0;
	int64_t		generated = 0;
	gptoss_engine_stats st0,
				st1;

	gptoss_gen_params_default(&p);
	p.raw = true;
	p.ignore_eos = rf == NULL;
	p.response_format = rf;
	p.temperature = 0;
	p.max_tokens = gen;

	gptoss_engine_get_stats(eng, &st0);
	t_submit = gptoss_now();
	for (int b = 0; b < batch && rc == 0; b++)
	{
		/* Random ordinary token ids, different for every request. */
		for (int i = 0; i < prompt_len; i++)
		{
			seed = gptoss_mix64(seed);
			prompt[i] = (int32_t) (seed % GPTOSS_TOK_STARTOFTEXT);
		}
		ids[b] = gptoss_engine_submit(eng, prompt, prompt_len, &p, &err);
		if (ids[b] < 0)
			rc = fail("bench: %s", err.msg);
	}
	while (rc == 0 && gptoss_engine_active(eng) > 0)
	{
		double		now,
					before = gptoss_now();
		bool		full = n_first == batch && gptoss_engine_active(eng) == batch;

		if (gptoss_engine_step(eng, &err) < 0)
		{
			rc = fail("bench: %s", err.msg);
			break;
		}
		now = gptoss_now();
		if (full)
		{
			full_s += now - before;
			full_tokens += batch;
		}
		for (int b = 0; b < batch && n_first < batch; b++)
		{
			gptoss_result res;

			if (first[b] == 0 && gptoss_engine_result(eng, ids[b], &res) == 0 && res.n_tokens > 0)
			{
				first[b] = now;
				ttft_sum += now - t_submit;
				if (++n_first == batch)
					t_prefilled = now;
			}
		}
	}
	t_end = gptoss_now();
	for (int b = 0; b < batch && rc == 0; b++)
	{
		gptoss_result res;

		if (gptoss_engine_result(eng, ids[b], &res) == 0)
			generated += res.n_tokens;
	}
	if (rc == 0)
	{
		double		prefill_s = t_prefilled - t_submit;
		double		decode_s = t_end - t_prefilled;
		double		decode_tokens = (double) (generated - batch);

		memset(&info, 0, sizeof(info));
		be->get_info(be, &info);
		gptoss_engine_get_stats(eng, &st1);
		printf("{\"batch\":%d,\"prompt_len\":%d,\"gen\":%d,\"prefill_tok_s\":%.1f,"
			   "\"decode_tok_s\":%.1f,\"ttft_ms\":%.3f,\"peak_mem_bytes\":%lld,\"weight_bytes\":%lld,"
			   "\"device\":\"%s\"",
			   batch, prompt_len, gen,
			   prefill_s > 0 ? (double) batch * prompt_len / prefill_s : 0.0,
			   decode_s > 0 && decode_tokens > 0 ? decode_tokens / decode_s : 0.0,
			   ttft_sum / batch * 1000.0, (long long) info.peak_memory_bytes,
			   (long long) info.weight_bytes, info.device_name);
		if (rf != NULL)
			printf(",\"constrained\":true,\"generated\":%lld,\"full_batch_decode_steps\":%.0f,"
				   "\"full_batch_decode_tok_s\":%.1f,\"masks\":%lld,\"mask_cpu_us_per_mask\":%.2f,"
				   "\"mask_wall_ms_per_step\":%.3f",
				   (long long) generated, full_tokens / batch, full_s > 0 ? full_tokens / full_s : 0.0,
				   (long long) (st1.masks - st0.masks),
				   st1.masks > st0.masks ? (st1.mask_seconds - st0.mask_seconds) / (st1.masks - st0.masks) * 1e6 : 0.0,
				   st1.steps > st0.steps ? (st1.mask_wall_seconds - st0.mask_wall_seconds) / (st1.steps - st0.steps) * 1e3 : 0.0);
		printf("}\n");
		fflush(stdout);
	}
	for (int b = 0; b < batch; b++)
		if (ids[b] >= 0)
			gptoss_engine_release(eng, ids[b]);
	free(ids);
	free(first);
	free(prompt);
	return rc;
}

/* bench --arrivals: the inter-token latency run (bench_serve.c). */
static int
cmd_bench_itl(const cli_opts *o, const bool *given)
{
	itl_workload w;
	gptoss_error err = {0};
	progress_state ps;
	gptoss_engine *eng;
	int			chunk = was_given(given, "prefill-chunk") ? (int) o->prefill_chunk
		: GPTOSS_DEFAULT_PREFILL_CHUNK;
	int			max_context;
	int			rc = 0;

	w.running = (int) o->running;
	w.prompt_len = (int) o->prompt_len;
	w.arrivals = (int) o->arrivals;
	w.arrival_len = (int) o->arrival_len;
	w.arrive_every = (int) o->arrive_every;
	w.seed = was_given(given, "seed") ? o->seed : 42;
	max_context = itl_workload_max_context(&w, chunk);
	if (was_given(given, "max-context"))
	{
		if (o->max_context < max_context)
			return fail("bench: --max-context %ld is shorter than the run needs (%d)",
						o->max_context, max_context);
		max_context = (int) o->max_context;
	}
	progress_init(&ps, o->verbose);
	/* a slot for every arrival: none waits for one, so TTFT is prefill alone */
	eng = create_engine(o, w.running + w.arrivals, max_context,
						was_given(given, "prefill-chunk") ? chunk : 0, &ps);
	if (eng == NULL)
		return 1;
	if (itl_run(eng, &w, &err) < 0)
		rc = fail("bench: %s", err.msg);
	gptoss_engine_free(eng);
	return rc;
}

/* bench --requests: the serving-shaped run (bench_serve.c). */
static int
cmd_bench_serve(const cli_opts *o, const bool *given)
{
	serve_workload w;
	serve_settings s;
	gptoss_error err = {0};
	progress_state ps;
	gptoss_engine *eng;
	int			n = (int) o->requests;
	bool		lognormal;
	int			rc = 0;

	if (o->lengths == NULL || strcmp(o->lengths, "fixed") == 0)
		lognormal = false;
	else if (strcmp(o->lengths, "lognormal") == 0)
		lognormal = true;
	else
		return fail("--lengths: expected fixed or lognormal, got \"%s\"", o->lengths);
	if (lognormal && (o->input_len <= SERVE_LENGTH_MIN || o->input_len >= SERVE_LENGTH_MAX ||
					  o->output_len <= SERVE_LENGTH_MIN || o->output_len >= SERVE_LENGTH_MAX))
		return fail("bench: log-normal mean lengths must lie between %d and %d tokens",
					SERVE_LENGTH_MIN, SERVE_LENGTH_MAX);
	if (serve_workload_draw(&w, n, (int) o->input_len, (int) o->output_len, lognormal,
							was_given(given, "seed") ? o->seed : 42) < 0)
		return fail("bench: out of memory");
	s.max_seqs = was_given(given, "max-seqs") ? (int) o->max_seqs : n < 1024 ? n : 1024;
	s.max_context = serve_workload_max_context(&w);
	if (was_given(given, "max-context"))
	{
		if (o->max_context < s.max_context)
		{
			serve_workload_free(&w);
			return fail("bench: --max-context %ld is shorter than the longest request (%d)",
						o->max_context, s.max_context);
		}
		s.max_context = (int) o->max_context;
	}
	s.prefill_chunk = was_given(given, "prefill-chunk") ? (int) o->prefill_chunk : 2048;
	s.max_step_tokens = was_given(given, "max-step-tokens") ? (int) o->max_step_tokens
		: s.max_seqs + s.prefill_chunk;
	progress_init(&ps, o->verbose);
	{
		cli_opts	eo = *o;

		eo.max_step_tokens = s.max_step_tokens;
		eng = create_engine(&eo, s.max_seqs, s.max_context, s.prefill_chunk, &ps);
	}
	if (eng == NULL)
	{
		serve_workload_free(&w);
		return 1;
	}
	if (serve_run(eng, &w, &s, &err) < 0)
		rc = fail("bench: %s", err.msg);
	gptoss_engine_free(eng);
	serve_workload_free(&w);
	return rc;
}

static int
cmd_bench(const cli_opts *o, const bool *given)
{
	int32_t    *batches = NULL;
	int			n_batches,
				max_batch = 1,
				rc = 0;
	int			prompt_len = (int) o->prompt_len,
				gen = (int) o->gen;
	int			context;
	int			prefill_chunk = (int) o->prefill_chunk;
	progress_state ps;
	gptoss_engine *eng;
	uint64_t	seed = was_given(given, "seed") ? o->seed : 1;
	char	   *rf = NULL;

	if (was_given(given, "requests") && o->json_schema)
		return fail("bench: --json-schema goes with --batch runs, not --requests");
	if (was_given(given, "arrivals") &&
		(was_given(given, "requests") || was_given(given, "batch") || was_given(given, "gen") ||
		 was_given(given, "json-schema") || was_given(given, "input-len") ||
		 was_given(given, "output-len") || was_given(given, "lengths") || was_given(given, "max-seqs")))
		return fail("bench: --arrivals takes --running, --prompt-len, --arrival-len and --arrive-every, "
					"not the options of --batch or --requests runs");
	if (!was_given(given, "arrivals") &&
		(was_given(given, "running") || was_given(given, "arrival-len") ||
		 was_given(given, "arrive-every")))
		return fail("bench: --running, --arrival-len and --arrive-every go with --arrivals");
	if (was_given(given, "arrivals"))
		return cmd_bench_itl(o, given);
	if (was_given(given, "requests"))
		return cmd_bench_serve(o, given);
	if (was_given(given, "input-len") || was_given(given, "output-len") || was_given(given, "lengths") ||
		was_given(given, "max-seqs"))
		return fail("bench: --input-len, --output-len, --lengths and --max-seqs go with --requests");
	n_batches = parse_batches(o->batch, &batches);
	if (n_batches < 0)
		return 1;
	for (int i = 0; i < n_batches; i++)
		if (batches[i] > max_batch)
			max_batch = batches[i];
	if ((long) prompt_len + gen > INT_MAX)
	{
		free(batches);
		return fail("bench: --prompt-len + --gen too large");
	}
	context = was_given(given, "max-context") ? (int) o->max_context : prompt_len + gen;
	if (context < prompt_len + gen)
	{
		free(batches);
		return fail("bench: --max-context %d is shorter than --prompt-len + --gen (%d)", context,
					prompt_len + gen);
	}
	/*
	 * A benchmark prompt is prefilled in one chunk (up to 2048 tokens) unless
	 * --prefill-chunk says otherwise: the engine's default of 256 exists to
	 * keep other sequences' decode latency low, which is not what the
	 * prefill figure measures.
	 */
	if (!was_given(given, "prefill-chunk"))
		prefill_chunk = prompt_len < 2048 ? prompt_len : 2048;
	if (o->json_schema && (rf = response_format_from_file(o->json_schema)) == NULL)
	{
		free(batches);
		return 1;
	}
	progress_init(&ps, o->verbose);
	eng = create_engine(o, max_batch, context, prefill_chunk, &ps);
	if (eng == NULL)
	{
		free(batches);
		free(rf);
		return 1;
	}
	/* Warm-up (lazy allocations, kernel selection) outside the timings. */
	{
		gptoss_gen_params p;
		gptoss_error err = {0};
		int32_t		warm[16];
		int			n_warm = prompt_len < 16 ? prompt_len : 16;
		int64_t		id;

		gptoss_gen_params_default(&p);
		p.raw = p.ignore_eos = true;
		p.temperature = 0;
		p.max_tokens = 2;
		for (int i = 0; i < n_warm; i++)
			warm[i] = 1000 + i;
		id = gptoss_engine_submit(eng, warm, n_warm, &p, &err);
		while (id >= 0 && gptoss_engine_active(eng) > 0)
			if (gptoss_engine_step(eng, &err) < 0)
				break;
		if (id < 0 || err.msg[0] != '\0')
			rc = fail("bench: %s", err.msg);
		else
			gptoss_engine_release(eng, id);
	}
	for (int i = 0; i < n_batches && rc == 0; i++)
		rc = bench_batch(eng, batches[i], prompt_len, gen, seed + (uint64_t) i, rf);
	gptoss_engine_free(eng);
	free(batches);
	free(rf);
	return rc;
}

/* ---------------------------------------------------------------------------
 * synth
 */

static int
cmd_synth(const cli_opts *o, const bool *given)
{
	gptoss_synth_preset preset;
	gptoss_config cfg;
	gptoss_error err = {0};
	progress_state ps;

	if (o->preset == NULL)
		return fail("synth: --preset is required (tiny, tiny-odd, tiny-moe, 20b or 120b)");
	if (o->out == NULL)
		return fail("synth: --out is required");
	if (gptoss_synth_preset_from_name(o->preset, &preset) < 0)
		return fail("synth: unknown preset \"%s\" (expected tiny, tiny-odd, tiny-moe, 20b or 120b)", o->preset);
	if (gptoss_synth_config(preset, &cfg, &err) < 0)
		return fail("synth: %s", err.msg);
	/* Synthesis is long for the big presets: always show its progress. */
	progress_init(&ps, true);
	if (gptoss_synth_write(&cfg, o->out, was_given(given, "seed") ? o->seed : 0, o->tokenizer,
						   show_progress, &ps, &err) < 0)
	{
		progress_done(&ps);
		return fail("synth: %s", err.msg);
	}
	progress_done(&ps);
	if (o->tokenizer == NULL)
		fprintf(stderr, "gptoss: synth: %s has no tokenizer.json yet and cannot be loaded until it has "
				"one: copy the gpt-oss tokenizer.json into it (test/fetch-tokenizer.sh in the "
				"source tree fetches it to build/tokenizer.json), or run synth again with "
				"--tokenizer FILE\n", o->out);
	return 0;
}

/* ---------------------------------------------------------------------------
 * main
 */

int
main(int argc, char **argv)
{
	static const struct
	{
		const char *name;
		int			cmd;
	}			commands[] = {
		{"tokenize", CMD_TOKENIZE}, {"logits", CMD_LOGITS}, {"generate", CMD_GENERATE},
		{"bench", CMD_BENCH}, {"synth", CMD_SYNTH},
	};
	cli_opts	o;
	bool		given[N_OPTIONS] = {false};
	const char *name;
	int			cmd = 0,
				rc;

	if (argc < 2)
	{
		print_usage(stderr);
		return 1;
	}
	name = argv[1];
	if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0)
	{
		print_usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(name, commands[i].name) == 0)
			cmd = commands[i].cmd;
	if (cmd == 0)
		return fail("unknown command \"%s\" (expected tokenize, logits, generate, bench or synth; see --help)",
					name);

	memset(&o, 0, sizeof(o));
	gptoss_gen_params_default(&o.params);
	o.device = "auto";
	o.top = 10;
	o.batch = "1,8,64";
	o.prompt_len = 128;
	o.gen = 128;
	o.input_len = 128;
	o.output_len = 128;
	o.running = 64;
	o.arrival_len = 2048;
	o.arrive_every = 16;
	rc = parse_options(argc, argv, 2, cmd, name, &o, given);
	if (rc == 2)
	{
		print_usage(stdout);
		return 0;
	}
	if (rc != 0)
		return 1;
	if ((cmd & CMD_MODEL) && o.model == NULL)
		return fail("%s: --model DIR is required", name);
	if ((cmd & CMD_COMPUTE) && check_device(o.device) != 0)
		return 1;

	switch (cmd)
	{
		case CMD_TOKENIZE:
			return cmd_tokenize(&o);
		case CMD_LOGITS:
			return cmd_logits(&o);
		case CMD_GENERATE:
			return cmd_generate(&o);
		case CMD_BENCH:
			return cmd_bench(&o, given);
		case CMD_SYNTH:
			return cmd_synth(&o, given);
	}
	return 1;
}
