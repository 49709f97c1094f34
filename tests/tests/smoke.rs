use relay_tests::*;
use uuid::Uuid;

#[tokio::test]
async fn two_editors_see_each_other() {
    let app = TestApp::spawn().await;
    let doc = new_document();
    let (ua, ub) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = Editor::join(&app, doc, ua, "tab-a", &app.editor_token(ua)).await;
    let mut b = Editor::join(&app, doc, ub, "tab-b", &app.editor_token(ub)).await;
    a.insert(0, "Hello").await;
    a.settle().await;
    b.catch_up_to(a.client.version()).await;
    assert_eq!(b.text(), "Hello");
}
