// The peers' checks: each one counted, the first that fails ends the process with what was wrong.
export function checker(tag) {
  const checks = { count: 0 };
  checks.check = (condition, what) => {
    if (!condition) {
      console.error(`[${tag}] ${what}`);
      process.exit(1);
    }
    checks.count += 1;
  };
  return checks;
}
