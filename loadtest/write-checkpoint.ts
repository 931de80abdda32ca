// node --import tsx loadtest/write-checkpoint.ts DIR CONFIG_JSON SEED: writes a random checkpoint.
// The benchmarks run it as a child process, so the process that measures resident memory never
// held the random weights it generated.
import { writeRandomCheckpoint } from "../kernels/random-checkpoint.ts";

const [dir, config, seed] = process.argv.slice(2);
writeRandomCheckpoint(dir, JSON.parse(config), Number(seed));
