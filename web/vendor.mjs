// Copies the browser files the API serves (the demo page's three.js, Swagger UI for /docs)
// from node_modules into the Python package, so that nothing is fetched from a CDN at run
// time. Run by `make install` and the API image's build: `npm ci && npm run vendor [OUT]`.
// OUT defaults to ../service/static/vendor; it is not committed (its .gitignore).
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "..", "service", "static", "vendor");

// [package, file in the package, file under OUT]. The import map in the demo page names
// three's module; its addons import "three" and each other by relative path.
const FILES = [
  ["three", "LICENSE", "three/LICENSE"],
  ["three", "build/three.module.js", "three/three.module.js"],
  ["three", "build/three.core.js", "three/three.core.js"],
  ["three", "examples/jsm/controls/OrbitControls.js", "three/addons/controls/OrbitControls.js"],
  ["three", "examples/jsm/loaders/GLTFLoader.js", "three/addons/loaders/GLTFLoader.js"],
  ["three", "examples/jsm/utils/BufferGeometryUtils.js", "three/addons/utils/BufferGeometryUtils.js"],
  ["three", "examples/jsm/utils/SkeletonUtils.js", "three/addons/utils/SkeletonUtils.js"],
  ["swagger-ui-dist", "LICENSE", "swagger-ui/LICENSE"],
  ["swagger-ui-dist", "NOTICE", "swagger-ui/NOTICE"],
  ["swagger-ui-dist", "swagger-ui-bundle.js", "swagger-ui/swagger-ui-bundle.js"],
  ["swagger-ui-dist", "swagger-ui.css", "swagger-ui/swagger-ui.css"],
  ["swagger-ui-dist", "favicon-32x32.png", "swagger-ui/favicon-32x32.png"],
];

for (const name of ["three", "swagger-ui"]) rmSync(join(out, name), { recursive: true, force: true });
const versions = {};
for (const [pkg, src, dst] of FILES) {
  const root = join(here, "node_modules", pkg);
  versions[pkg] = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  mkdirSync(dirname(join(out, dst)), { recursive: true });
  copyFileSync(join(root, src), join(out, dst));
}
// The API checks this file to tell a missing `make install` from a broken one.
writeFileSync(join(out, "versions.json"), JSON.stringify(versions, null, 2) + "\n");
console.log(`copied ${FILES.length} files (${JSON.stringify(versions)}) to ${out}`);
