// The live event stream (`/api/v1/stream`, protocol in api/stream.py): authenticate with the first
// message, subscribe, and on any drop reconnect with `since` = the last sequence seen — no gap, no repeat.

import { token } from "./lib.js";

const RETRY_MS = 1000;
let open = 0; // connected streams, for the footer's indicator

function indicator() {
  const el = document.getElementById("live");
  if (!el) return;
  el.className = `live ${open ? "on" : "off"}`;
  el.textContent = open ? "● live" : "● offline";
}

export class LiveStream {
  /** subscription: {topics, correlationId?}; onEvent(envelope, seq); onGap() when events were coalesced. */
  constructor(subscription, onEvent, { onGap = () => {}, onRefused = () => {} } = {}) {
    this.subscription = subscription;
    this.onEvent = onEvent;
    this.onGap = onGap;
    this.onRefused = onRefused;
    this.since = subscription.since ?? null;
    this.closed = false;
    this.connect();
  }

  connect() {
    if (this.closed || !token()) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/stream`);
    this.ws = ws;
    let counted = false;
    ws.onopen = () => ws.send(JSON.stringify({ token: token() }));
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      switch (frame.type) {
        case "authenticated": {
          const subscribe = { ...this.subscription };
          if (this.since !== null) subscribe.since = this.since;
          else delete subscribe.since;
          ws.send(JSON.stringify({ subscribe }));
          break;
        }
        case "subscribed":
          this.since = frame.since;
          counted = true;
          open += 1;
          indicator();
          break;
        case "event":
          this.since = frame.seq;
          this.onEvent(frame.event, frame.seq);
          break;
        case "heartbeat":
          this.since = Math.max(this.since ?? 0, frame.seq);
          break;
        case "coalesced":
          this.onGap(frame.dropped);
          break;
        case "refused":
          this.onRefused(frame.reason);
          this.close();
          break;
      }
    };
    ws.onclose = (event) => {
      if (counted) {
        open -= 1;
        indicator();
      }
      if (event.code === 4401) this.onRefused(event.reason || "not signed in");
      else if (!this.closed) setTimeout(() => this.connect(), RETRY_MS);
    };
  }

  close() {
    this.closed = true;
    this.ws?.close();
  }
}
