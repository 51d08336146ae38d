#!/usr/bin/env node
'use strict';
// CommonJS on purpose: libuv sizes its thread pool from UV_THREADPOOL_SIZE at its first use, and loading an ES
// module entry already uses it. Quantizing weights at load runs on that pool, so it gets every core here first.
const { availableParallelism } = require('node:os');
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, Math.max(4, availableParallelism())));

// `vramfit … | head` closes the pipe early: that is the reader's choice, not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}

import('../dist/cli/main.js')
  .then(({ main }) => main(process.argv.slice(2)))
  .then((code) => {
    process.exitCode = code;
  });
