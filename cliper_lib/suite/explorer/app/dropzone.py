"""Drop a photo anywhere on the app's page, or paste one: a small Vue template widget (ipyvue, which
Solara serves) that reads the file in the browser and hands its bytes to Python."""

from __future__ import annotations

import base64
from collections.abc import Callable

import ipyvue
import traitlets

TEMPLATE = """
<template>
  <div class="cliper-drop-hint" style="color:#555;font-size:90%;margin:2px 0 6px 0">
    {{ dragging ? 'drop the photo to open it' : hint }}
  </div>
</template>
<script>
module.exports = {
  data() { return { dragging: false }; },
  mounted() {
    this.onPaste = (e) => {
      const files = e.clipboardData ? e.clipboardData.files : [];
      if (files.length) { e.preventDefault(); this.send(files[0]); }
    };
    this.onOver = (e) => {
      if (e.dataTransfer && Array.from(e.dataTransfer.types).includes('Files')) {
        e.preventDefault(); this.dragging = true;
      }
    };
    this.onLeave = () => { this.dragging = false; };
    this.onDrop = (e) => {
      this.dragging = false;
      if (e.dataTransfer && e.dataTransfer.files.length) {
        e.preventDefault(); this.send(e.dataTransfer.files[0]);
      }
    };
    document.addEventListener('paste', this.onPaste);
    document.addEventListener('dragover', this.onOver);
    document.addEventListener('dragleave', this.onLeave);
    document.addEventListener('drop', this.onDrop);
  },
  destroyed() {
    document.removeEventListener('paste', this.onPaste);
    document.removeEventListener('dragover', this.onOver);
    document.removeEventListener('dragleave', this.onLeave);
    document.removeEventListener('drop', this.onDrop);
  },
  methods: {
    send(file) {
      const reader = new FileReader();
      reader.onload = () => {
        this.photo({ name: file.name || 'pasted.png', data: reader.result.split(',')[1] || '' });
      };
      reader.readAsDataURL(file);
    },
  },
};
</script>
"""


class PhotoDrop(ipyvue.VueTemplate):
    """Listens for a photo dropped anywhere on the page or pasted (Ctrl+V) and calls
    `on_file(name, content)`."""

    template = traitlets.Unicode(TEMPLATE).tag(sync=True)
    hint = traitlets.Unicode("… or drop a photo anywhere on this page, or paste one (Ctrl+V)").tag(
        sync=True
    )

    def __init__(self, on_file: Callable[[str, bytes], object], **kwargs):
        super().__init__(**kwargs)
        self.on_file = on_file
        self.add_class("cliper-drop")

    def vue_photo(self, data: dict) -> None:
        """Called from the page with {name, data (base64)}."""
        self.on_file(str(data.get("name") or "pasted.png"), base64.b64decode(data.get("data", "")))
