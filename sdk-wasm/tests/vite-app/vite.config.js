import { defineConfig } from "vite";

// Top-level await in main.js (`await init()`): target browsers that have it.
export default defineConfig({
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
  logLevel: "warn",
});
