// earshot "Listen" capture: an AudioWorklet that downmixes the microphone to mono, converts it to 16-bit PCM
// (s16le) and posts it to the page in blocks of `blockSeconds` (default 0.1 s) at the AudioContext's rate,
// with the block's RMS level for the meter. The page streams the blocks over /v1/stream.
"use strict";

class ListenCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const seconds = (options && options.processorOptions && options.processorOptions.blockSeconds) || 0.1;
    this.size = Math.max(128, Math.round(sampleRate * seconds));
    this.block = new Int16Array(this.size);
    this.fill = 0;
    this.sumSq = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") {
        this.flush();
        this.running = false;
      }
    };
  }

  flush() {
    if (!this.fill) return;
    const pcm = this.block.slice(0, this.fill);
    const rms = Math.sqrt(this.sumSq / this.fill);
    this.port.postMessage({ pcm: pcm.buffer, rms }, [pcm.buffer]);
    this.fill = 0;
    this.sumSq = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || !input.length) return true; // no input connected yet
    const channels = input.length;
    const n = input[0].length;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < channels; c++) v += input[c][i];
      v /= channels;
      if (v > 1) v = 1;
      else if (v < -1) v = -1;
      this.sumSq += v * v;
      this.block[this.fill++] = v < 0 ? v * 32768 : v * 32767;
      if (this.fill === this.size) this.flush();
    }
    return true;
  }
}

registerProcessor("earshot-listen", ListenCapture);
