/*
 * gen_corpus.c - writes the seed corpus of fuzz_codec: valid encodings of deltas that use
 * every op kind and field (the same deterministic generator the unit tests use).
 * Usage: gen_corpus DIR. The output is committed under tests/fuzz/corpus/codec/; rerun it
 * when the format changes (build with -Dfuzz=true: build/fuzz/tests/fuzz/gen_corpus).
 */
#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "delta_gen.h"

static int write_seed(const char *dir, const char *name, const shardmap_delta *d)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	char path[4096];
	if (d == NULL || shardmap__codec_encode(d, &buf, &len) != 0)
		return 1;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	int bad = f == NULL || fwrite(buf, 1, len, f) != len;
	if (f != NULL && fclose(f) != 0)
		bad = 1;
	free(buf);
	return bad;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	int bad = 0;
	char name[64];
	/* small whole maps: cells, streams, open and closed shards with lineage */
	for (uint64_t seed = 1; seed <= 6; seed++) {
		shardmap_delta *d = gen_map_delta(seed, seed + 1, 2, 4);
		snprintf(name, sizeof name, "map-%llu", (unsigned long long)seed);
		bad |= write_seed(argv[1], name, d);
		shardmap_delta_free(d);
	}
	/* a step delta and one with every delete op */
	shardmap_delta *d = gen_step_delta(41, 42, "seed");
	bad |= write_seed(argv[1], "step", d);
	shardmap_delta_free(d);
	d = NULL;
	if (shardmap_delta_new(3, 4, &d) == 0 && shardmap_delta_delete_cell(d, "c") == 0 &&
	    shardmap_delta_delete_stream(d, "s") == 0 &&
	    shardmap_delta_delete_shard(d, "s", "shardId-000000000001") == 0)
		bad |= write_seed(argv[1], "deletes", d);
	else
		bad = 1;
	shardmap_delta_free(d);
	d = NULL;
	if (shardmap_delta_new(0, 1, &d) == 0)
		bad |= write_seed(argv[1], "empty", d);
	shardmap_delta_free(d);
	if (bad)
		fprintf(stderr, "gen_corpus: could not write every seed to %s\n", argv[1]);
	return bad;
}
