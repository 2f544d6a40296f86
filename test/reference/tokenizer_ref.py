#!/usr/bin/env python3
"""Reference token ids for test/fixtures/tokenizer_texts.json.

Usage: python3 test/reference/tokenizer_ref.py TOKENIZER_JSON TEXTS_JSON OUT_JSON

Runs offline (tiktoken and HF `tokenizers` installed, no downloads): the
tiktoken Encoding is built from the ranks inside tokenizer.json itself
(model.vocab keys are the GPT-2 bytes_to_unicode spelling of each token's
bytes, values are the ranks), with the o200k split pattern and the added
tokens as specials.  Every text is encoded with tiktoken (special-token text
is ordinary text) and with HF tokenizers (add_special_tokens=False).

HF matches added tokens inside text, so for texts that spell a special token
it may return special ids; those disagreements are expected and reported.  Any
other disagreement is an error.  OUT_JSON always gets tiktoken's ids (what
harmony uses), as {"texts": [...], "ids": [[...], ...]}; the exit status is 1
when tiktoken and HF disagreed on a text without special-token text.
"""
import json
import sys

import tiktoken
import tokenizers

# tiktoken's o200k_base split pattern (docs/architecture.md, Tokenizer).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

KNOWN_IDS = {"assistant": 173781, "analysis": 35644, "final": 17196}


def gpt2_unicode_to_byte():
    """Inverse of GPT-2 bytes_to_unicode: printable bytes stand for themselves,
    the other 68 map to U+0100.. in byte order."""
    printable = (list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)))
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + extra)] = b
            extra += 1
    return table


def build_tiktoken(tj):
    """tiktoken Encoding from tokenizer.json's own ranks and added tokens."""
    u2b = gpt2_unicode_to_byte()
    ranks = {}
    for key, rank in tj["model"]["vocab"].items():
        ranks[bytes(u2b[ch] for ch in key)] = rank
    specials = {t["content"]: t["id"] for t in tj["added_tokens"]}
    file_pattern = tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    if file_pattern != O200K_PATTERN:
        sys.exit("tokenizer.json's split pattern differs from o200k's:\n%s" % file_pattern)
    return tiktoken.Encoding(name="o200k_harmony_from_tokenizer_json", pat_str=O200K_PATTERN,
                             mergeable_ranks=ranks, special_tokens=specials), set(specials.values())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    tok_path, texts_path, out_path = sys.argv[1:]
    with open(tok_path, encoding="utf-8") as f:
        tj = json.load(f)
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    enc, special_ids = build_tiktoken(tj)
    hf = tokenizers.Tokenizer.from_file(tok_path)

    for text, want in KNOWN_IDS.items():
        got = enc.encode(text, disallowed_special=())
        assert got == [want], "tiktoken: %r -> %r, want [%d]" % (text, got, want)

    all_ids, special_notes, errors = [], [], []
    for i, text in enumerate(texts):
        ids = enc.encode(text, disallowed_special=())
        if enc.decode_bytes(ids) != text.encode("utf-8"):
            errors.append("text %d: tiktoken does not round-trip" % i)
        if any(t in special_ids for t in ids):
            errors.append("text %d: tiktoken produced a special id" % i)
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        if hf_ids != ids:
            if any(t in special_ids for t in hf_ids):
                special_notes.append("text %d %r: HF matched special tokens (%d HF ids, %d tiktoken ids)"
                                     % (i, text[:60], len(hf_ids), len(ids)))
            else:
                first = next((k for k, (a, b) in enumerate(zip(ids, hf_ids)) if a != b),
                             min(len(ids), len(hf_ids)))
                errors.append("text %d %r: tiktoken and HF disagree at token %d (tiktoken %r, HF %r)"
                              % (i, text[:60], first, ids[first:first + 5], hf_ids[first:first + 5]))
        all_ids.append(ids)

    with open(out_path, "w", encoding="utf-8") as f:
        f.write('{"texts": [\n')
        f.write(",\n".join(json.dumps(t, ensure_ascii=False) for t in texts))
        f.write('\n],\n"ids": [\n')
        f.write(",\n".join(json.dumps(ids) for ids in all_ids))
        f.write("\n]}\n")

    print("tiktoken %s, tokenizers %s, python %s" % (tiktoken.__version__, tokenizers.__version__,
                                                     sys.version.split()[0]))
    print("%d texts, %d tokens, written to %s" % (len(texts), sum(map(len, all_ids)), out_path))
    print("%d texts where HF matched special-token text (expected; tiktoken ids recorded):"
          % len(special_notes))
    for note in special_notes:
        print("  " + note)
    print("%d errors" % len(errors))
    for e in errors:
        print("  ERROR " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
