# Strata - thin wrapper over Meson/Ninja.  See README.md.
BUILD      ?= build
BUILD_ASAN ?= build-asan
PYTEST     ?= /usr/bin/python3 -m pytest

.PHONY: all deps build build-asan run test unit integration bench stress fuzz clean

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

bench: build
	@scripts/deps bench
	/usr/bin/python3 bench/run.py --strata $(BUILD)/strata

# The long crash campaign: kill -9 the daemon STRESS_KILLS times under load
# and check every acknowledged message after each restart (tests/crash/).
STRESS_KILLS   ?= 1000
STRESS_SECONDS ?= 5400
stress: build
	STRATA_BIN=$(CURDIR)/$(BUILD)/strata STRATA_CRASH_ITERATIONS=$(STRESS_KILLS) \
	STRATA_CRASH_SECONDS=$(STRESS_SECONDS) STRATA_CRASH_VERBOSE=1 $(PYTEST) -q -x tests/crash/test_crash.py

# Runs every libFuzzer target for FUZZ_SECONDS each (clang, ASan+UBSan).
fuzz:
	@scripts/deps fuzz
	scripts/fuzz $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
