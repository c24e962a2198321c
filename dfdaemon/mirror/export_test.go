package mirror

// QueryValueForTest exposes queryValue to the external tests.
var QueryValueForTest = queryValue
