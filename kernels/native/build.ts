// npm run build:native (also run by npm install): builds the native kernel now rather than on
// first use, and says whether quantized models will run on it here. Never fails the install:
// without it, onnxruntime runs quantized models.
import { NATIVE_BINARY, nativeAddon } from "../native-decoder.ts";

const got = nativeAddon();
if ("addon" in got) console.log(`colm: native kernel ${NATIVE_BINARY} (${got.addon.fast ? "AVX-512 VNNI: quantized models run on it" : "portable: no AVX-512 VNNI on this CPU, so quantized models run on onnxruntime"})`);
else console.log(`colm: native kernel not built (${got.reason}); quantized models run on onnxruntime`);
