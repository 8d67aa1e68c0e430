// Keccak-256 (the pre-standard padding Ethereum uses, not SHA3-256) and EIP-55 address checksums.
// Wallets report addresses in lower case; a Sign-In-with-Ethereum message must carry the checksummed
// form, and no library can be loaded (no CDN, no build step), so the few lines live here. BigInt lanes:
// slow, but one 40-byte hash per sign-in.

const MASK = (1n << 64n) - 1n;
// Rotation offsets by lane index x + 5y (FIPS 202, table 2).
const ROTATIONS = [0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14]
  .map(BigInt);
// Round constants from the spec's LFSR: bit 2^j - 1 of round i is the LFSR's output.
const ROUND_CONSTANTS = (() => {
  const out = [];
  let r = 1;
  for (let i = 0; i < 24; i++) {
    let rc = 0n;
    for (let j = 0; j < 7; j++) {
      r = ((r << 1) ^ ((r >> 7) * 0x71)) % 256;
      if (r & 2) rc ^= 1n << ((1n << BigInt(j)) - 1n);
    }
    out.push(rc);
  }
  return out;
})();

const rotl = (x, n) => (n === 0n ? x : ((x << n) | (x >> (64n - n))) & MASK);

function permute(a) {
  const b = new Array(25);
  const c = new Array(5);
  for (const rc of ROUND_CONSTANTS) {
    for (let x = 0; x < 5; x++) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
    for (let x = 0; x < 5; x++) {
      const d = c[(x + 4) % 5] ^ rotl(c[(x + 1) % 5], 1n);
      for (let y = 0; y < 25; y += 5) a[x + y] ^= d;
    }
    for (let x = 0; x < 5; x++) {
      for (let y = 0; y < 5; y++) b[y + 5 * ((2 * x + 3 * y) % 5)] = rotl(a[x + 5 * y], ROTATIONS[x + 5 * y]);
    }
    for (let y = 0; y < 25; y += 5) {
      for (let x = 0; x < 5; x++) a[x + y] = b[x + y] ^ (~b[((x + 1) % 5) + y] & MASK & b[((x + 2) % 5) + y]);
    }
    a[0] ^= rc;
  }
}

/** Keccak-256 of the bytes, as 64 lower-case hex digits. */
export function keccak256Hex(bytes) {
  const rate = 136;
  const padded = new Uint8Array(Math.floor(bytes.length / rate + 1) * rate);
  padded.set(bytes);
  padded[bytes.length] ^= 0x01;
  padded[padded.length - 1] ^= 0x80;
  const state = new Array(25).fill(0n);
  for (let offset = 0; offset < padded.length; offset += rate) {
    for (let i = 0; i < rate / 8; i++) {
      let lane = 0n;
      for (let k = 7; k >= 0; k--) lane = (lane << 8n) | BigInt(padded[offset + 8 * i + k]);
      state[i] ^= lane;
    }
    permute(state);
  }
  let hex = "";
  for (let i = 0; i < 4; i++) {
    for (let k = 0; k < 8; k++) hex += Number((state[i] >> BigInt(8 * k)) & 0xffn).toString(16).padStart(2, "0");
  }
  return hex;
}

/** The EIP-55 mixed-case form of a 0x address; throws on anything that is not 20 bytes of hex. */
export function checksumAddress(address) {
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) throw new Error(`not an Ethereum address: ${address}`);
  const lower = address.slice(2).toLowerCase();
  const hash = keccak256Hex(new TextEncoder().encode(lower));
  let out = "0x";
  for (let i = 0; i < 40; i++) out += parseInt(hash[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
  return out;
}
