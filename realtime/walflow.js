// walflow.js: being written.
