use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn lists_configured_models_sorted_in_openai_shape() {
    let app = spawn_app_with(&[(
        "MODEL_CONFIG",
        r#"{"zeta":"app-zzzzzzzzzzzzzzzz0001","alpha":"app-aaaaaaaaaaaaaaaa0002","mid":{"key":"app-mmmmmmmmmmmmmmmm0003"}}"#,
    )])
    .await;
    let r = app.get("/v1/models").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "mid", "zeta"]);
    for m in data {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "dify");
        assert!(m["created"].is_i64(), "created must be an integer: {m}");
    }
    // App keys are never exposed.
    assert!(!body.to_string().contains("app-"));
}

#[tokio::test]
async fn retrieves_one_model_or_404() {
    let app = spawn_app().await;
    let r = app
        .get(&format!("/v1/models/{MODEL}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some(MODEL), Some("model"))
    );

    let r = app.get("/v1/models/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("my-app, zeta")
    );
}
