/** Makes `require("vscode")` load the stand-in; imported first by each test file. */
import Module = require("module");
import * as path from "path";

const standin = path.join(__dirname, "vscode-standin.js");
const resolve = (Module as unknown as { _resolveFilename: (...args: unknown[]) => string })._resolveFilename;
(Module as unknown as { _resolveFilename: (...args: unknown[]) => string })._resolveFilename = function (
  request: unknown, ...rest: unknown[]
) {
  return request === "vscode" ? standin : resolve.call(this, request, ...rest);
};
