// Tokenizers behind the engine's `Tokenizer` contract: the built-in byte-level one (id = UTF-8
// byte) and Hugging Face tokenizer.json files via @huggingface/tokenizers. Plus the incremental
// decoder that turns a stream of token ids into displayable text without splitting characters.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizerCore } from "@huggingface/tokenizers";
import { ModelLoadError } from "./errors.ts";

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
}

export interface SpecialTokens {
  bos: number | null;
  eos: number | null;
}

/** A tokenizer that can also show a single token for logprob display. */
export interface DisplayTokenizer extends Tokenizer {
  tokenText(tokenId: number): string;
}

export class TokenizerError extends ModelLoadError {
  override name = "TokenizerError";
  constructor(
    message: string,
    readonly reason: "missing_file" | "invalid_file",
    readonly path?: string,
  ) {
    super(message);
  }
}

const utf8Encoder = new TextEncoder();
/** Non-fatal: invalid or incomplete sequences become U+FFFD (the incremental decoder relies on it). */
const utf8Decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

const REPLACEMENT = "\uFFFD";

/**
 * The project's built-in tokenizer: token id = one UTF-8 byte (0 … 255). Ids ≥ 256 are special
 * tokens (BOS / EOS from the config); they are never produced by `encode` and decode to "".
 * `encode` does not add BOS: the request layer prepends it.
 */
export class ByteTokenizer implements DisplayTokenizer {
  constructor(readonly special: SpecialTokens = { bos: null, eos: null }) {}

  encode(text: string): number[] {
    return Array.from(utf8Encoder.encode(text));
  }

  decode(ids: number[]): string {
    const bytes = new Uint8Array(ids.length);
    let n = 0;
    for (const id of ids) if (Number.isInteger(id) && id >= 0 && id < 256) bytes[n++] = id;
    return utf8Decoder.decode(bytes.subarray(0, n));
  }

  /**
   * One token as text. ASCII bytes show as themselves; bytes ≥ 0x80 are only fragments of a
   * multi-byte character and show as the escape "\xNN" (e.g. "\xF0"); special ids show as "".
   */
  tokenText(tokenId: number): string {
    if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId >= 256) return "";
    if (tokenId < 0x80) return String.fromCharCode(tokenId);
    return `\\x${tokenId.toString(16).toUpperCase().padStart(2, "0")}`;
  }
}

/**
 * A Hugging Face tokenizer.json (plus optional tokenizer_config.json). `encode` adds no special
 * tokens (the request layer prepends BOS itself); `decode` skips special tokens, as vLLM does by
 * default.
 */
export class HfTokenizer implements DisplayTokenizer {
  private readonly core: HfTokenizerCore;

  constructor(
    tokenizerJson: object,
    tokenizerConfig: object = {},
    readonly special: SpecialTokens = { bos: null, eos: null },
  ) {
    this.core = new HfTokenizerCore(tokenizerJson, tokenizerConfig);
  }

  /** Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json. */
  static fromDirectory(dir: string, special?: SpecialTokens): HfTokenizer {
    const jsonPath = join(dir, "tokenizer.json");
    if (!existsSync(jsonPath)) {
      throw new TokenizerError(
        `No tokenizer found: ${jsonPath} does not exist (add tokenizer.json, or set "tokenizer": "byte" in the model config)`,
        "missing_file",
        jsonPath,
      );
    }
    const configPath = join(dir, "tokenizer_config.json");
    const tokenizerJson = readJsonObject(jsonPath);
    const tokenizerConfig = existsSync(configPath) ? readJsonObject(configPath) : {};
    try {
      return new HfTokenizer(tokenizerJson, tokenizerConfig, special);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new TokenizerError(`Cannot build a tokenizer from ${jsonPath}: ${reason}`, "invalid_file", jsonPath);
    }
  }

  get vocabSize(): number {
    return this.core.get_vocab(true).size;
  }

  encode(text: string): number[] {
    return this.core.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[]): string {
    if (ids.length === 0) return ""; // the library rejects an empty list
    return this.core.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /** One token as text; a token that is only part of a character shows as its raw vocabulary entry. */
  tokenText(tokenId: number): string {
    const text = this.decode([tokenId]);
    if (!text.includes(REPLACEMENT)) return text;
    return this.core.id_to_token(tokenId) ?? text;
  }
}

function readJsonObject(path: string): object {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new TokenizerError(`Cannot read ${path}: ${reason}`, "invalid_file", path);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new TokenizerError(`${path} must contain a JSON object`, "invalid_file", path);
  }
  return parsed;
}

/**
 * The model folder's tokenizer: "byte" → ByteTokenizer; otherwise dir/tokenizer.json →
 * HfTokenizer; otherwise a TokenizerError naming the missing file.
 */
export function loadTokenizer(dir: string, spec: "byte" | undefined, special: SpecialTokens): DisplayTokenizer {
  if (spec === "byte") return new ByteTokenizer(special);
  return HfTokenizer.fromDirectory(dir, special);
}

/** Display text of one token: the tokenizer's own `tokenText` when it has one, else its decode. */
export function tokenText(tokenizer: Tokenizer, tokenId: number): string {
  const display = tokenizer as Partial<DisplayTokenizer>;
  return typeof display.tokenText === "function" ? display.tokenText(tokenId) : tokenizer.decode([tokenId]);
}

/**
 * Token ids in, text out, one token at a time. Decoding tokens one by one is wrong twice over: a
 * character split across byte tokens would come out as U+FFFD pieces, and tokenizers whose
 * decoding depends on neighbours (SentencePiece's leading "▁") would lose spaces. So the decoder
 * re-decodes a short window: the tokens since the last release plus the one before them for
 * context, and releases only the new text, holding it back while it ends in U+FFFD (an
 * incomplete character).
 */
export class IncrementalDecoder {
  /** Tokens not yet fully released, preceded by context tokens already released. */
  private window: number[] = [];
  /** window[0 … contextEnd) are context: their text has been released. */
  private contextEnd = 0;

  /** A genuinely invalid byte stream would otherwise be held forever. */
  static readonly MAX_HELD_TOKENS = 16;

  constructor(private readonly tokenizer: Tokenizer) {}

  push(tokenId: number): string {
    this.window.push(tokenId);
    const context = this.tokenizer.decode(this.window.slice(0, this.contextEnd));
    const full = this.tokenizer.decode(this.window);
    const held = this.window.length - this.contextEnd;
    if ((full.endsWith(REPLACEMENT) && held < IncrementalDecoder.MAX_HELD_TOKENS) || full.length < context.length) return "";
    const released = full.startsWith(context) ? full.slice(context.length) : full.slice(Math.min(context.length, full.length));
    // Keep the last released token as context for the next one.
    this.window = this.window.slice(this.window.length - 1);
    this.contextEnd = 1;
    return released;
  }

  /** Text still held (an incomplete character comes out as U+FFFD). */
  flush(): string {
    const context = this.tokenizer.decode(this.window.slice(0, this.contextEnd));
    const full = this.tokenizer.decode(this.window);
    this.window = [];
    this.contextEnd = 0;
    return full.startsWith(context) ? full.slice(context.length) : full.slice(Math.min(context.length, full.length));
  }
}
