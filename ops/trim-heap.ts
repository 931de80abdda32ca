// glibc's heap, tuned for a model server through koffi (an optional dependency with prebuilt
// binaries); where glibc or koffi is missing both calls do nothing.
//
// Once a session is loaded, trimHeap hands freed pages back to the OS: onnxruntime prepacks each
// MatMul weight and then frees the unpacked copy, but glibc keeps freed chunks inside its heap
// resident (its mmap threshold has grown past the weights' sizes by then), so without a trim the
// process holds both copies of every weight a subgraph reads.
//
// From then on, holdFreedMemory keeps what the process frees: a prefill's tensors of tens of MiB
// would otherwise be unmapped or trimmed when freed and faulted back in, zeroed, on the next call.
// The steady state holds the largest call's working set, which the next call of that size needs
// anyway. The figures are in ops/README.md (Memory).
import { createRequire } from "node:module";

interface Libc {
  trim: (pad: number) => number;
  mallopt: (param: number, value: number) => number;
}
let libc: Libc | null | undefined;

function load(): Libc | null {
  if (process.platform !== "linux") return null;
  try {
    const koffi = createRequire(import.meta.url)("koffi") as { load(lib: string): { func(signature: string): (...args: number[]) => number } };
    const lib = koffi.load("libc.so.6");
    return { trim: lib.func("int malloc_trim(size_t pad)"), mallopt: lib.func("int mallopt(int param, int value)") };
  } catch {
    return null; // not glibc, or koffi not installed
  }
}

const libcOnce = (): Libc | null => (libc === undefined ? (libc = load()) : libc);

/** Returns freed heap memory to the OS; true when glibc released some. */
export function trimHeap(): boolean {
  const c = libcOnce();
  return c ? c.trim(0) === 1 : false;
}

// mallopt parameters (malloc.h).
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;

/**
 * Keeps freed memory in the heap for reuse: allocations under 256 MiB come from the heap rather
 * than their own mappings, and the heap's free top is returned to the OS only past 1 GiB.
 * True when glibc took both settings.
 */
export function holdFreedMemory(): boolean {
  const c = libcOnce();
  return c ? c.mallopt(M_MMAP_THRESHOLD, 256 * 2 ** 20) === 1 && c.mallopt(M_TRIM_THRESHOLD, 2 ** 30) === 1 : false;
}
