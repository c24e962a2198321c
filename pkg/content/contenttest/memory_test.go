package contenttest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemory(t *testing.T) {
	t.Parallel()
	contenttest.Suite(t, func(*testing.T) content.Store { return contenttest.NewMemory() })
}
