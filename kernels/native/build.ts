// npm run build:native (also run by npm install): builds the native decode kernel now rather than
// on first use, and says whether it runs at full speed here. Never fails the install: without it
// onnxruntime runs every call.
import { NATIVE_BINARY, nativeAddon } from "../native-decoder.ts";

const got = nativeAddon();
if ("addon" in got) console.log(`colm: native decode kernel ${NATIVE_BINARY} (${got.addon.fast ? "AVX-512 VNNI" : "portable: slow, no AVX-512 VNNI on this CPU"})`);
else console.log(`colm: native decode kernel not built (${got.reason}); onnxruntime runs decode steps`);
