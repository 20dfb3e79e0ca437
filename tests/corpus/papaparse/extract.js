// Writes cases.json from papaparse's tests/test-cases.js (the npm package
// `papaparse`, which ships its tests): the CORE_PARSER_TESTS and PARSE_TESTS
// arrays, as data. Functions in a case (step callbacks, transforms) become
// the string "<function>" so the Rust test can see which option a case uses.
//   npm pack papaparse@5.7.1 && tar xzf papaparse-5.7.1.tgz
//   node tests/corpus/papaparse/extract.js package/tests/test-cases.js > tests/corpus/papaparse/cases.json
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
function array(name) {
	const start = src.indexOf('var ' + name + ' = [');
	const end = src.indexOf('\n];', start);
	const text = src.slice(src.indexOf('[', start), end + 2);
	const RECORD_SEP = String.fromCharCode(30);
	const UNIT_SEP = String.fromCharCode(31);
	const BASE_PATH = './';
	return eval('(' + text + ')');
}
const out = [];
for (const suite of ['CORE_PARSER_TESTS', 'PARSE_TESTS']) {
	for (const test of array(suite)) {
		out.push(Object.assign({ suite }, test));
	}
}
process.stdout.write(JSON.stringify(out, (k, v) => typeof v === 'function' ? '<function>' : v, 1) + '\n');
