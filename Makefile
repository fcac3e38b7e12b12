# Strata - thin wrapper over Meson/Ninja.  See README.md.
BUILD      ?= build
BUILD_ASAN ?= build-asan
PYTEST     ?= /usr/bin/python3 -m pytest

.PHONY: all deps build build-asan run test unit integration bench bench-ingest bench-flood bench-tier bench-tier-rebuild bench-mover bench-scale stress fuzz clean

FUZZ_SECONDS ?= 60

all: build

deps:
	@scripts/deps

$(BUILD)/build.ninja:
	meson setup $(BUILD) -Dwerror=true

$(BUILD_ASAN)/build.ninja:
	meson setup $(BUILD_ASAN) -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

build-asan: deps $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)

# Builds, then starts Strata on its embedded default with a demo domain.
run: build
	@scripts/run-demo $(BUILD)/strata

# Every test: unit tests on both builds, the integration suite against the
# sanitizer build (any ASan/UBSan report fails the run) and the plain build,
# then a short kill -9 crash campaign (`make stress` runs the long one).
test: build build-asan
	meson test -C $(BUILD) --print-errorlogs
	meson test -C $(BUILD_ASAN) --print-errorlogs
	STRATA_ASAN=1 STRATA_BIN=$(CURDIR)/$(BUILD_ASAN)/strata $(PYTEST) -q -m "not slow_asan" tests/integration
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata $(PYTEST) -q tests/integration
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata STRATA_CRASH_ITERATIONS=20 STRATA_CRASH_SECONDS=60 $(PYTEST) -q tests/crash

unit: build
	meson test -C $(BUILD) --print-errorlogs

integration: build
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata $(PYTEST) -q tests/integration

# Every benchmark of the project, each against its reference where it has
# one: SMTP ingest and IMAP/POP3 reading vs Postfix + Dovecot (bench/run.py
# writes docs/BENCHMARKS.md, keeping the sections below), the flood vs
# Postfix + postscreen, tier placement vs age-only, LRU and Belady, the
# tier rebuild from no tier state at 1,000,000 messages, and the tier
# mover's cost to IMAP FETCH latency, and one node at full size (50,000
# accounts, 1,000,000 messages, against 1,000 accounts; results and plots in
# bench/results/; their sections of docs/BENCHMARKS.md are written from
# them).  About an hour and a quarter, and 20 GB free under /var/tmp for the
# scale run (removed afterwards).
bench: bench-ingest bench-flood bench-tier bench-tier-rebuild bench-mover bench-scale

bench-ingest: build
	@scripts/deps bench
	/usr/bin/python3 bench/run.py --strata $(BUILD)/strata

bench-flood: build
	@scripts/deps bench
	/usr/bin/python3 bench/flood.py --strata $(BUILD)/strata

bench-mover: build
	/usr/bin/python3 bench/mover_impact.py --strata $(BUILD)/strata

# `strata tier rebuild` from no tier state at all: 1,000,000 messages over
# 50,000 accounts on three tiers, the tier tables and checkpoints deleted
# (about 5 GB under /var/tmp, removed afterwards; 10 to 15 minutes).
bench-tier-rebuild: build
	/usr/bin/python3 bench/tier_rebuild.py --strata $(BUILD)/strata

bench-tier: build
	@scripts/deps bench
	d=$$(date -u +%F); $(BUILD)/bench/tier_sim --policies strata,strata-size,age,lru,belady \
		--out bench/results/tier-sim-$$d.json && \
	/usr/bin/python3 bench/plot_tier_sim.py bench/results/tier-sim-$$d.json

# One node at full size: 50,000 accounts, 1,000,000 messages (about 17 GB
# of mail in a new directory under /var/tmp, removed afterwards; about 15
# minutes on two cores), against 1,000 accounts.  Scale it down with
# SCALE_ARGS="--accounts 5000 --messages 100000".  See bench/scale.py.
SCALE_ARGS ?=
bench-scale: build
	/usr/bin/python3 bench/scale.py --strata $(BUILD)/strata $(SCALE_ARGS)

# The long crash campaigns: kill -9 the daemon STRESS_KILLS times under load
# and check every acknowledged message after each restart; then the long
# power-loss replay (every sync point and 600 random ones of a 150-message
# run, each crash state checked; tests/crash/README.md "Power loss").
STRESS_KILLS   ?= 1000
STRESS_SECONDS ?= 5400
stress: build
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata STRATA_CRASH_ITERATIONS=$(STRESS_KILLS) \
	STRATA_CRASH_SECONDS=$(STRESS_SECONDS) STRATA_CRASH_VERBOSE=1 $(PYTEST) -q -x tests/crash/test_crash.py
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata STRATA_POWERLOSS_MESSAGES=150 STRATA_POWERLOSS_POINTS=600 \
	STRATA_POWERLOSS_SYNC_POINTS=-1 STRATA_POWERLOSS_SERVE=12 $(PYTEST) -q -s tests/crash/test_powerloss.py

# Runs every libFuzzer target for FUZZ_SECONDS each (clang, ASan+UBSan).
fuzz:
	@scripts/deps fuzz
	scripts/fuzz $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
