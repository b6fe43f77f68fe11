package clustershare_test

import (
	"fmt"

	"github.com/walflow/walflow/internal/clustershare"
)

func Example() {
	fmt.Println(clustershare.IndexesLock("app"))
	fmt.Println(clustershare.OperatorsLock("app"))
	fmt.Println(clustershare.IndexPrefix("app") + "by_user")
	// Output:
	// walflow.indexes/app
	// walflow.operators/app
	// app/by_user
}
