// Hands freed heap pages back to the OS once a session is loaded. onnxruntime prepacks each MatMul
// weight and then frees the unpacked copy, but glibc keeps freed chunks inside its heap resident
// (its mmap threshold has grown past the weights' sizes by then), so without this the process
// holds both copies of every weight a subgraph reads: 1.47× the weight bytes on bench-m, 1.11×
// after a trim (npm run bench:engine). glibc's malloc_trim is reached through koffi (an optional dependency with
// prebuilt binaries); where either is missing this does nothing.
import { createRequire } from "node:module";

type Trim = (pad: number) => number;
let trim: Trim | null | undefined;

function load(): Trim | null {
  if (process.platform !== "linux") return null;
  try {
    const koffi = createRequire(import.meta.url)("koffi") as { load(lib: string): { func(signature: string): Trim } };
    return koffi.load("libc.so.6").func("int malloc_trim(size_t pad)");
  } catch {
    return null; // not glibc, or koffi not installed
  }
}

/** Returns freed heap memory to the OS; true when glibc released some. */
export function trimHeap(): boolean {
  if (trim === undefined) trim = load();
  return trim ? trim(0) === 1 : false;
}
